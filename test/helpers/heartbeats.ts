/**
 * Heartbeat bodies written by hand, for tests that pose as peers on the bus
 * (attackers, peers of other versions): every field set, `fields` on top.
 */
import { PROTOCOL_VERSION, type PresenceInfo, presenceCodec } from '../../broker/wire/bus-messages.js';

export function fakeHeartbeat(fields: Partial<PresenceInfo>): Uint8Array {
  return presenceCodec.encode({
    protocolVersion: PROTOCOL_VERSION,
    id: 'agA',
    role: 'agent',
    identifiers: '',
    version: '0.0.0',
    openTunnels: 0,
    draining: false,
    uptimeMs: 1,
    heartbeatIntervalMs: 2000,
    bytesIn: 0,
    bytesOut: 0,
    alive: true,
    proxyStrategies: '',
    incarnation: '',
    ...fields,
  });
}
