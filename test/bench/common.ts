/**
 * Shared by the benchmark's processes: the destination protocol, the ways a
 * load generator reaches a destination, the worker commands, and statistics.
 */

/** The bulk destination's request header: op u8 | length u48 big-endian. */
export const BULK_HEADER_BYTES = 7;

export function bulkHeader(op: 'U' | 'D', length: number): Buffer {
  const header = Buffer.allocUnsafe(BULK_HEADER_BYTES);
  header[0] = op.charCodeAt(0);
  header.writeUIntBE(length, 1, 6);
  return header;
}

export interface DestinationPorts {
  bulk: number;
  echo: number;
  blackhole: number;
}
export type DestinationName = keyof DestinationPorts;

/**
 * How a load generator reaches a destination:
 *   direct      TCP on loopback, no hop
 *   relay       one plain Node TCP relay hop (socket.pipe)
 *   grpc-relay  one plain Node gRPC ProxyService hop that dials the destination itself (no bus)
 *   grpc        the frontend's gRPC door, over NATS, through the agent
 *   connect     the frontend's HTTP CONNECT door, over NATS, through the agent
 *   nats        the design's floor, nats.js alone between two load workers: the dial is a
 *               request the other worker answers after a loopback TCP connect to the
 *               destination, the data a publish/subscribe ping-pong it echoes (no destination)
 *   nats-relay  the smallest tunnel of this design (nats-relay.ts): a socket into one process,
 *               NATS, a socket out of another; echo destination only (no flow control)
 */
export type Kind = 'direct' | 'relay' | 'grpc-relay' | 'grpc' | 'connect' | 'nats' | 'nats-relay';

export interface Endpoints {
  dest: DestinationPorts;
  relay?: DestinationPorts;
  grpcRelayUds?: string;
  grpcUds?: string;
  connectUds?: string;
  /** The bench's nats-server, for the floor (kind 'nats'). */
  natsUrl?: string;
  /** The minimal NATS tunnel's front port (kind 'nats-relay', echo destination only). */
  natsRelayPort?: number;
}

export type WorkerCommand =
  | { cmd: 'init'; endpoints: Endpoints }
  | { cmd: 'throughput'; kind: Kind; dir: 'up' | 'down'; bytes: number; chunk: number; warmup: number }
  | { cmd: 'roundtrip'; kind: Kind; tunnels: number; count: number; size: number; warmup: number }
  | {
      cmd: 'roundtrip-interleaved';
      kinds: Kind[];
      count: number;
      size: number;
      warmup: number;
      batch: number;
    }
  | { cmd: 'dials'; kind: Kind; count: number; concurrency: number; ownConnection?: boolean }
  | { cmd: 'idle-open'; kind: Kind; count: number; concurrency: number }
  | { cmd: 'idle-activate'; count: number; bytes: number }
  | { cmd: 'idle-close' }
  | { cmd: 'noisy-start'; kind: Kind; chunk: number; stallMs: number }
  | { cmd: 'noisy-stop' }
  /** Answers the floor's dials and ping-pongs (kind 'nats') of the other worker until the process exits. */
  | { cmd: 'nats-floor-serve' }
  | {
      cmd: 'nats-pub';
      url: string;
      subject: string;
      creditSubject: string;
      msgSize: number;
      bytes: number;
    }
  /** The floor's sender: bulk destination -> NATS (see nats-relay-floor.ts). */
  | { cmd: 'floor-send'; url: string; subject: string; creditSubject: string; bytes: number; streams: number }
  /** The floor's receiver: NATS -> bulk destination. */
  | {
      cmd: 'floor-receive';
      url: string;
      subject: string;
      creditSubject: string;
      window: number;
      bytes: number;
      streams: number;
    }
  | {
      cmd: 'nats-sub';
      url: string;
      subject: string;
      creditSubject: string;
      window: number;
      msgSize: number;
      payloadPerMsg: number;
      bytes: number;
      /** Messages received before the clock starts (connection and JIT warm-up). */
      warmupMessages: number;
    };

export interface WorkerRequest {
  id: number;
  command: WorkerCommand;
}
export interface WorkerReply {
  id: number;
  result?: unknown;
  error?: string;
  /** Sent without id: the worker is ready (nats-pub: subscribed for credit). */
  event?: string;
}

export interface ThroughputResult {
  seconds: number;
  bytes: number;
}
export interface SamplesResult {
  /** Microseconds. */
  samples: number[];
  seconds: number;
  failed: number;
  firstError?: string;
}
export interface InterleavedResult {
  /** Microseconds, per kind. */
  samples: Record<string, number[]>;
}
export interface IdleOpenResult {
  opened: number;
  failed: number;
  seconds: number;
  firstError?: string;
}
export interface IdleActivateResult {
  /** Seconds each tunnel took for its transfer. */
  durations: number[];
  seconds: number;
  bytes: number;
  failed: number;
  firstError?: string;
}
export interface NoisyResult {
  bytesAccepted: number;
}

// ---- results ----

export const SCENARIOS = ['throughput', 'roundtrip', 'dial', 'many', 'noisy', 'churn', 'balance'] as const;
export type Scenario = (typeof SCENARIOS)[number];

/** What the CONNECT rows say while the frontend has no --mode http-connect. */
export const CONNECT_NA = 'n/a (frontend has no http-connect mode yet)';

export interface Row {
  scenario: Scenario;
  figure: string;
  /** null: not measured (see na). */
  value: number | null;
  unit: string;
  baseline?: { name: string; value: number | null; unit: string };
  /** value / baseline value. */
  ratio?: number | null;
  target?: string;
  met?: boolean | null;
  na?: string;
  /** Shown instead of the bare value (for instance the absolute figure beside an overhead). */
  note?: string;
  extra?: Record<string, unknown>;
}

export interface BenchResult {
  benchmark: 'konnectivity-nats';
  mode: 'quick' | 'full';
  startedAt: string;
  seconds: number;
  machine: Record<string, unknown>;
  connect: { available: boolean; reason?: string };
  scenarios: Scenario[];
  rows: Row[];
  cpu: CpuRecord[];
  /** The frontends' dial stage histogram over the dial scenario (absent when it did not run). */
  dialStages?: DialStages;
  errors: string[];
}

export interface DialStages {
  /** false: no frontend exports knats_dial_stage_seconds. */
  found: boolean;
  stages: DialStage[];
}

/** One (door, stage) series of knats_dial_stage_seconds, as observed during the dial scenario. */
export interface DialStage {
  door: string;
  stage: string;
  count: number;
  /** Milliseconds; null when the stage saw no dial. */
  meanMs: number | null;
  /** Estimated from the buckets, as Prometheus' histogram_quantile does. */
  p50Ms: number | null;
  p99Ms: number | null;
}

export interface CpuRecord {
  what: string;
  wallSeconds: number;
  /** CPU seconds per process during the measurement. */
  cpu: Record<string, number>;
  bytes?: number;
}

// ---- statistics -------------------------------------------------------------

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank]!;
}

export function sortNumbers(values: readonly number[]): number[] {
  return Float64Array.from(values)
    .sort()
    .reduce<number[]>((out, v) => {
      out.push(v);
      return out;
    }, []);
}

/** A plain-text table: columns padded to their widest cell, a dashed rule under the header. */
export function textTable(header: string[], lines: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join(' | ')
      .trimEnd();
  return [fmt(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...lines.map(fmt)].join('\n');
}

export const MB = 1_000_000;
export const MiB = 1024 * 1024;
export const KiB = 1024;

/**
 * A benchmark child process stops when its parent does: the parent closes our
 * stdin (also when it dies) or sends SIGTERM/SIGINT.
 */
export function stopWithParent(stop: () => void): void {
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
