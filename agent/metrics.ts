/**
 * Agent metrics under upstream's names (konnectivity_network_proxy_agent_*).
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { createDialMetrics } from '../broker/metrics.js';

const PREFIX = 'konnectivity_network_proxy_agent_';

export function createAgentMetrics(registry: Registry) {
  const registers = [registry];
  return {
    ...createDialMetrics(
      registry,
      PREFIX,
      'endpoint_dial_failure_total',
      'Number of failures dialing the remote endpoint, by reason',
    ),
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
