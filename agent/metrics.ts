/**
 * Agent metrics under upstream's proxy-agent names and label sets
 * (konnectivity_network_proxy_agent_*). Segments are upstream's: a dial
 * request reaches the agent "to_agent", its answer leaves "from_agent".
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { upstreamAgentDialReason } from '../broker/errors.js';
import { createDialMetrics } from '../broker/telemetry/metrics.js';

const PREFIX = 'konnectivity_network_proxy_agent_';

/** Upstream proxy-agent's dial latency buckets (5 ms to 30 s). */
const UPSTREAM_DIAL_BUCKETS = [0.005, 0.025, 0.1, 0.5, 2.5, 10, 30];

export function createAgentMetrics(registry: Registry) {
  const registers = [registry];
  return {
    ...createDialMetrics(registry, PREFIX, UPSTREAM_DIAL_BUCKETS, {
      name: 'endpoint_dial_failure_total',
      help: 'Number of failures dialing the remote endpoint, by reason',
      upstreamReason: upstreamAgentDialReason,
    }),
    openEndpointConnections: new Gauge({
      name: `${PREFIX}open_endpoint_connections`,
      help: 'Current number of open endpoint connections',
      registers,
    }),
    streamPackets: new Counter({
      name: `${PREFIX}stream_packets_total`,
      help: 'Count of packets processed, by segment and packet type (example: to_agent, DIAL_REQ)',
      labelNames: ['segment', 'packet_type'],
      registers,
    }),
  };
}

export type AgentMetrics = ReturnType<typeof createAgentMetrics>;
