/**
 * Protobuf control messages of the bus (proto/bus.proto), loaded at runtime.
 */
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/**
 * Version of the bus protocol this build speaks. Version 2 added the FIN
 * frame (TCP half-close); a version-1 peer is still served, with a local EOF
 * closing the whole tunnel as version 1 did.
 */
export const PROTOCOL_VERSION = 2;
/** Oldest peer version this build can serve. */
export const MIN_PROTOCOL_VERSION = 1;
/** First version whose peers understand FIN frames. */
export const HALF_CLOSE_PROTOCOL_VERSION = 2;

export interface BusDialRequest {
  protocolVersion: number;
  tunnelId: string;
  protocol: string;
  address: string;
  frontendId: string;
  initialWindow: number;
  dialTimeoutMs: number;
  /** W3C trace context of the dial (empty when the frontend does not trace; older frontends never send it). */
  traceparent?: string;
  /** The frontend's --dial-accept-timeout; 0 from older frontends (which need ACCEPTED at once). */
  acceptTimeoutMs?: number;
}

export interface BusDialResponse {
  protocolVersion: number;
  tunnelId: string;
  agentId: string;
  errorCode: string;
  errorMessage: string;
  initialWindow: number;
  /** The agent's own time per stage of the dial, in microseconds (broker/dial-stages.ts AGENT_STAGES); empty from older agents. */
  stageMicros?: number[];
}

export interface PresenceInfo {
  protocolVersion: number;
  id: string;
  role: 'agent' | 'frontend';
  identifiers: string;
  version: string;
  openTunnels: number;
  draining: boolean;
  uptimeMs: number;
  heartbeatIntervalMs: number;
  bytesIn: number;
  bytesOut: number;
  alive: boolean;
  proxyStrategies: string;
  /** Random per process start ('' from older peers): a new one under a known id is a restart. */
  incarnation: string;
}

export const protoDir = fileURLToPath(new URL('../../../proto/', import.meta.url));

const root = protobuf.loadSync(`${protoDir}bus.proto`);

/**
 * Encodes our typed values as they are (their field types are the proto's:
 * no fromObject conversion), and decodes into a plain object with every
 * field, unset ones at their defaults, uint64 as numbers (byte counts and
 * durations, far below 2^53): what toObject did, without its per-call option
 * handling, on every dial.
 */
function codecFor<T extends object>(name: string) {
  const type = root.lookupType(name);
  const fields = type.fieldsArray.map((field) => ({ name: field.name, long: field.long }));
  return {
    encode(value: T): Uint8Array {
      return type.encode(value).finish();
    },
    decode(bytes: Uint8Array): T {
      // Unset fields read the prototype's defaults; repeated fields are arrays of their own.
      const message = type.decode(bytes) as unknown as Record<string, unknown>;
      const plain: Record<string, unknown> = {};
      for (const { name, long } of fields) {
        const value = message[name];
        plain[name] =
          long && typeof value !== 'number' ? (value as { toNumber(): number }).toNumber() : value;
      }
      return plain as T;
    },
  };
}

export const dialRequestCodec = codecFor<BusDialRequest>('knats.bus.v1.DialRequest');
export const dialResponseCodec = codecFor<BusDialResponse>('knats.bus.v1.DialResponse');
export const presenceCodec = codecFor<PresenceInfo>('knats.bus.v1.Presence');
