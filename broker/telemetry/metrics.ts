/**
 * Metrics shared by both sides: a registry with process and Node.js default
 * metrics, and the knats_ bus metrics (frames, bytes, gaps, stalls, reconnects).
 * Upstream-named metrics live with each component (frontend/metrics.ts,
 * agent/metrics.ts) under upstream's names and label sets, so existing
 * dashboards keep working. No default labels: a process has one role, and an
 * extra label on upstream's series would break upstream's queries.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { BusErrorKind } from '../bus/connection.js';
import { type ErrorCode, type KnatsError, reasonLabel } from '../errors.js';
import type { TunnelHost } from '../tunnel/tunnel-host.js';

export interface BusMetrics {
  readonly registry: Registry;
  readonly reconnects: Counter;
  /** 1 while the NATS link is up. */
  readonly busConnected: Gauge;
  /** Connection failures and server errors, by kind. */
  busError(kind: BusErrorKind): void;
  /** Record a tunnel's end: bytes each way and the close reason. */
  tunnelEnded(bytesIn: number, bytesOut: number, err: KnatsError | undefined): void;
  /** Expose the live tunnel host's counts as gauges. */
  watchHost(host: () => TunnelHost | undefined): void;
}

export function createBusMetrics(): BusMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const reconnects = new Counter({
    name: 'knats_nats_reconnects_total',
    help: 'NATS reconnects of this process',
    registers: [registry],
  });
  const busConnected = new Gauge({
    name: 'knats_bus_connected',
    help: '1 while this process is connected to NATS, else 0',
    registers: [registry],
    // Aggregated over a frontend's workers: 1 only while every worker is connected.
    aggregator: 'min',
  });
  const busErrors = new Counter({
    name: 'knats_bus_errors_total',
    help: 'NATS connection failures and server errors, by kind (dns, refused, tls, authentication, authorization, ...)',
    labelNames: ['kind'],
    registers: [registry],
  });
  const tunnelBytes = new Counter({
    name: 'knats_tunnel_bytes_total',
    help: 'Bytes carried by tunnels, by direction (in = from the bus, out = onto the bus)',
    labelNames: ['direction'],
    registers: [registry],
  });
  const tunnelsClosed = new Counter({
    name: 'knats_tunnels_closed_total',
    help: 'Tunnels ended, by close reason code (ok for a clean close)',
    labelNames: ['reason'],
    registers: [registry],
  });
  const bytesIn = tunnelBytes.labels('in');
  const bytesOut = tunnelBytes.labels('out');
  let hostRef: () => TunnelHost | undefined = () => undefined;
  const hostGauge = (name: string, help: string, read: (host: TunnelHost) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const host = hostRef();
        this.set(host ? read(host) : 0);
      },
    });
  hostGauge('knats_open_tunnels', 'Tunnel ends open in this process', (h) => h.size);
  hostGauge(
    'knats_credit_stalled_tunnels',
    'Tunnels whose sender waits for credit now',
    (h) => h.blockedCount,
  );
  hostGauge(
    'knats_unconfirmed_tunnels',
    'Agent tunnels not yet confirmed by their frontend',
    (h) => h.unconfirmedCount,
  );
  hostGauge(
    'knats_receive_budget_bytes',
    'Shared receive credit lent to tunnels above their minimum',
    (h) => h.budget.inUse,
  );
  // Beside the bytes lent, so an alert can tell how close tunnels are to the window's ceiling.
  hostGauge(
    'knats_receive_budget_capacity_bytes',
    'Shared receive credit this process can lend (--receive-budget)',
    (h) => h.budget.capacity,
  );
  const counterFromHost = (name: string, help: string, read: (host: TunnelHost) => number) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const host = hostRef();
        if (!host) return;
        this.reset();
        this.inc(read(host));
      },
    });
  counterFromHost('knats_bus_frames_in_total', 'Tunnel frames received from the bus', (h) => h.framesIn);
  counterFromHost('knats_bus_frames_out_total', 'Tunnel frames published to the bus', (h) => h.framesOut);
  counterFromHost(
    'knats_tunnels_stalled_total',
    'Tunnels this process aborted because bytes waited and none moved for --stalled-tunnel-timeout',
    (h) => h.stalledTunnels,
  );
  counterFromHost(
    'knats_unknown_tunnel_frames_total',
    'Frames for tunnels this process does not know',
    (h) => h.unknownTunnelFrames,
  );
  return {
    registry,
    reconnects,
    busConnected,
    busError: (kind) => busErrors.labels(kind).inc(),
    tunnelEnded(inBytes, outBytes, err) {
      bytesIn.inc(inBytes);
      bytesOut.inc(outBytes);
      tunnelsClosed.labels(err?.code ?? 'ok').inc();
    },
    watchHost(host) {
      hostRef = host;
    },
  };
}

/** Our dial latency resolution: 0.5 ms to 25 s. */
const DIAL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25];

/**
 * The dial latency histogram and failure counter both sides have, under the
 * component's upstream prefix and failure-counter name. The buckets are ours
 * plus every bucket upstream's component has, so a query or alert on one of
 * upstream's `le` values keeps finding its series.
 */
export function createDialMetrics(
  registry: Registry,
  prefix: string,
  upstreamBuckets: readonly number[],
  failure: { name: string; help: string; upstreamReason: (code: ErrorCode) => string },
) {
  const upstreamFailures = new Counter({
    name: `${prefix}${failure.name}`,
    help: failure.help,
    labelNames: ['reason'],
    registers: [registry],
  });
  const failures = new Counter({
    name: 'knats_dial_failures_total',
    help: `Dial failures by our reason (refused, dns, denied, ...); ${prefix}${failure.name} has upstream's reasons`,
    labelNames: ['reason'],
    registers: [registry],
  });
  return {
    dialDuration: new Histogram({
      name: `${prefix}dial_duration_seconds`,
      help: 'Latency of dial to the remote endpoint in seconds',
      buckets: [...new Set([...upstreamBuckets, ...DIAL_BUCKETS])].sort((a, b) => a - b),
      registers: [registry],
    }),
    /** One failed dial, on upstream's series with upstream's reason and on ours with ours. */
    countDialFailure(code: ErrorCode): void {
      upstreamFailures.labels(failure.upstreamReason(code)).inc();
      failures.labels(reasonLabel(code)).inc();
    },
  };
}
