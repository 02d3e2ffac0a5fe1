/**
 * Frontend metrics. Where a meaning is upstream's proxy-server's, so are the
 * name (konnectivity_network_proxy_server_*) and the label set, so dashboards
 * and alerts carry over; what only exists here is under knats_.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { upstreamServerDialReason } from '../broker/errors.js';
import type { DialStage, DialTimeline } from '../broker/telemetry/dial-stages.js';
import { createDialMetrics } from '../broker/telemetry/metrics.js';

const PREFIX = 'konnectivity_network_proxy_server_';

/** Upstream proxy-server's dial latency buckets (1 µs to 12.5 s). */
const UPSTREAM_DIAL_BUCKETS = [0.000001, 0.00001, 0.0001, 0.005, 0.025, 0.1, 0.5, 2.5, 12.5];

/**
 * Our client-stream error reasons that are errors of the gRPC stream itself,
 * with the gRPC code upstream's stream_errors_total would carry for them
 * (grpc-go reports an undecodable message as Internal; the code of a failed
 * stream is not known here). Other reasons (CONNECT refusals, TLS handshakes,
 * packets for closed tunnels) are not gRPC stream errors upstream.
 */
const GRPC_STREAM_ERROR_CODES: Readonly<Record<string, string>> = {
  stream_error: 'Unknown',
  malformed_packet: 'Internal',
};

/** Stage buckets fine enough for sub-millisecond stages: 25 µs to 1 s. */
const DIAL_STAGE_BUCKETS = [
  0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];

export type Door = 'grpc' | 'connect';

export function createFrontendMetrics(registry: Registry) {
  const registers = [registry];
  let readyBackends: () => Record<string, number> = () => ({});
  const streamPackets = new Counter({
    name: `${PREFIX}stream_packets_total`,
    help: 'Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)',
    labelNames: ['segment', 'packet_type'],
    registers,
  });
  // Resolving label values costs a hash per call; DATA packets are counted per message, so children are cached.
  const packetChildren = new Map<string, { inc(): void }>();
  const upstreamStreamErrors = new Counter({
    name: `${PREFIX}stream_errors_total`,
    help: 'Count of gRPC stream errors, by segment, gRPC code and packet type',
    labelNames: ['segment', 'code', 'packet_type'],
    registers,
  });
  const clientErrors = new Counter({
    name: 'knats_client_errors_total',
    help: 'Client streams and connections failed or refused, by segment and reason (every door)',
    labelNames: ['segment', 'reason'],
    registers,
  });
  const dialStages = new Histogram({
    name: 'knats_dial_stage_seconds',
    help: 'Time a successful dial spent in each stage (door, route, bus, agent, answer), by door and stage',
    labelNames: ['door', 'stage'],
    buckets: DIAL_STAGE_BUCKETS,
    registers,
  });
  // Ten stages per dial: each child is resolved once (on first use, so a door that never dials shows no series).
  const stageChildren: Record<Door, Map<DialStage, { observe(seconds: number): void }>> = {
    grpc: new Map(),
    connect: new Map(),
  };
  return {
    ...createDialMetrics(registry, PREFIX, UPSTREAM_DIAL_BUCKETS, {
      name: 'dial_failure_count',
      help: 'Number of dial failures observed, by reason',
      upstreamReason: upstreamServerDialReason,
    }),
    refusedDialAnswers: new Counter({
      name: 'knats_dial_answers_refused_total',
      help: 'Dial answers refused as not from the agent the dial was sent to, or not a sane answer for it (the dial moved on to the next agent)',
      registers,
    }),
    grpcConnections: new Gauge({
      name: `${PREFIX}grpc_connections`,
      help: 'Number of current gRPC streams, by service method',
      labelNames: ['service_method'],
      registers,
    }),
    httpConnections: new Gauge({
      name: `${PREFIX}http_connections`,
      help: 'Number of current HTTP CONNECT connections',
      registers,
    }),
    pendingDials: new Gauge({
      name: `${PREFIX}pending_backend_dials`,
      help: 'Current number of pending backend dial requests',
      registers,
    }),
    established: new Gauge({
      name: `${PREFIX}established_connections`,
      help: 'Current number of established end-to-end connections',
      registers,
    }),
    readyBackends: new Gauge({
      name: `${PREFIX}ready_backends`,
      help: 'Number of agents known on the bus that take new dials, by proxy strategy',
      labelNames: ['proxy_strategy'],
      registers,
      // Every worker of --workers N sees the same fleet: the aggregate is that count, not N times it.
      aggregator: 'min',
      collect() {
        for (const [strategy, count] of Object.entries(readyBackends())) this.labels(strategy).set(count);
      },
    }),
    // Deprecated upstream in favour of ready_backends, still on upstream's dashboards.
    readyBackendConnections: new Gauge({
      name: `${PREFIX}ready_backend_connections`,
      help: 'Number of agents known on the bus that take new dials. DEPRECATED, please use ready_backends',
      registers,
      aggregator: 'min',
      collect() {
        this.set(readyBackends().default ?? 0);
      },
    }),
    /** Where ready_backends reads its counts at scrape time ("default" counts every agent). */
    watchReadyBackends(read: () => Record<string, number>) {
      readyBackends = read;
    },
    streamPackets,
    countPacket(segment: 'from_client' | 'to_client', packetType: string) {
      const key = `${segment}/${packetType}`;
      let child = packetChildren.get(key);
      if (!child) {
        child = streamPackets.labels(segment, packetType);
        packetChildren.set(key, child);
      }
      child.inc();
    },
    /** A client stream or connection failed or was refused: knats_client_errors_total, and upstream's series for gRPC stream errors. */
    streamErrors: {
      labels(segment: 'from_client' | 'to_client', reason: string) {
        return {
          inc() {
            clientErrors.labels(segment, reason).inc();
            const code = GRPC_STREAM_ERROR_CODES[reason];
            if (code) upstreamStreamErrors.labels(segment, code, 'Unknown').inc();
          },
        };
      },
    },
    /** A dial answered to its client: every stage it went through. */
    observeDialStages(door: Door, timeline: DialTimeline) {
      const children = stageChildren[door];
      for (const [stage, seconds] of timeline.durations) {
        let child = children.get(stage);
        if (!child) {
          child = dialStages.labels(door, stage);
          children.set(stage, child);
        }
        child.observe(seconds);
      }
    },
    tlsHandshakesPending: new Gauge({
      name: 'knats_door_tls_handshakes_pending',
      help: 'TCP connections of a door whose TLS handshake is under way, by door (bounded per door; beyond it new connections are closed)',
      labelNames: ['door'],
      registers,
    }),
    doorBufferedBytes: new Gauge({
      name: 'knats_door_buffered_bytes',
      help: 'Bytes a door holds of client messages (gRPC) or request headers (CONNECT) received but not yet whole, by door',
      labelNames: ['door'],
      registers,
    }),
    doorBufferLimitBytes: new Gauge({
      name: 'knats_door_buffer_limit_bytes',
      help: 'Per-process budget of knats_door_buffered_bytes, by door: a client that grows its share beyond it is refused',
      labelNames: ['door'],
      registers,
    }),
    connectionDuration: new Histogram({
      name: 'knats_connection_duration_seconds',
      help: 'Duration of established end-to-end connections in seconds',
      buckets: [0.005, 0.025, 0.1, 0.5, 2.5, 10, 30, 60, 300, 1800, 3600, 21600],
      registers,
    }),
  };
}

export type FrontendMetrics = ReturnType<typeof createFrontendMetrics>;
