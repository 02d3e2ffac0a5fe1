/**
 * Agent metrics under upstream's names (konnectivity_network_proxy_agent_*).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

const PREFIX = 'konnectivity_network_proxy_agent_';

export function createAgentMetrics(registry: Registry) {
  const registers = [registry];
  return {
    dialDuration: new Histogram({
      name: `${PREFIX}dial_duration_seconds`,
      help: 'Latency of dial to the remote endpoint in seconds',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25],
      registers,
    }),
    dialFailures: new Counter({
      name: `${PREFIX}endpoint_dial_failure_total`,
      help: 'Number of failures dialing the remote endpoint, by reason',
      labelNames: ['reason'],
      registers,
    }),
    openEndpointConnections: new Gauge({
      name: `${PREFIX}open_endpoint_connections`,
      help: 'Current number of open endpoint connections',
      registers,
    }),
    streamPackets: new Counter({
      name: `${PREFIX}stream_packets_total`,
      help: 'Count of dial requests and responses handled, by segment and packet type',
      labelNames: ['segment', 'packet_type'],
      registers,
    }),
  };
}

export type AgentMetrics = ReturnType<typeof createAgentMetrics>;
