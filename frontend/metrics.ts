/**
 * Frontend metrics under upstream's proxy-server names
 * (konnectivity_network_proxy_server_*), so dashboards and alerts carry over.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { createDialMetrics } from '../broker/metrics.js';

const PREFIX = 'konnectivity_network_proxy_server_';

export function createFrontendMetrics(registry: Registry) {
  const registers = [registry];
  let readyBackends: () => Record<string, number> = () => ({});
  const streamPackets = new Counter({
    name: `${PREFIX}stream_packets_total`,
    help: 'Count of packets processed, by segment and packet type',
    labelNames: ['segment', 'packet_type'],
    registers,
  });
  // Resolving label values costs a hash per call; DATA packets are counted per message, so children are cached.
  const packetChildren = new Map<string, { inc(): void }>();
  return {
    ...createDialMetrics(
      registry,
      PREFIX,
      'dial_failure_count',
      'Number of dial failures observed, by reason',
    ),
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
      collect() {
        for (const [strategy, count] of Object.entries(readyBackends())) this.labels(strategy).set(count);
      },
    }),
    /** Where ready_backends reads its counts at scrape time. */
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
    streamErrors: new Counter({
      name: `${PREFIX}stream_errors_total`,
      help: 'Count of gRPC stream errors, by segment and reason',
      labelNames: ['segment', 'reason'],
      registers,
    }),
    connectionDuration: new Histogram({
      name: `${PREFIX}connection_duration_seconds`,
      help: 'Duration of end-to-end connections in seconds',
      buckets: [0.005, 0.025, 0.1, 0.5, 2.5, 10, 30, 60, 300, 1800, 3600, 21600],
      registers,
    }),
  };
}

export type FrontendMetrics = ReturnType<typeof createFrontendMetrics>;
