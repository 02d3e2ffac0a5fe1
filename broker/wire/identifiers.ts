/**
 * --agent-identifiers, in upstream's URL query syntax:
 * `host=a&host=b&ipv4=10.0.0.1&ipv6=::1&cidr=10.0.0.0/8&default-route=true`.
 */
import { createHash } from 'node:crypto';
import { ErrorCode, KnatsError } from '../errors.js';

/** Longest identifiers text a heartbeat may carry (a few dozen hosts and CIDRs). */
export const MAX_IDENTIFIERS_LENGTH = 4096;

const KNOWN_KEYS = ['host', 'ipv4', 'ipv6', 'cidr', 'default-route'] as const;

export interface AgentIdentifiers {
  readonly host: readonly string[];
  readonly ipv4: readonly string[];
  readonly ipv6: readonly string[];
  readonly cidr: readonly string[];
  readonly defaultRoute: boolean;
  /** The canonical query form carried in heartbeats. */
  readonly text: string;
}

export function parseAgentIdentifiers(value: string): AgentIdentifiers {
  if (value.length > MAX_IDENTIFIERS_LENGTH) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--agent-identifiers: ${value.length} characters, more than the limit of ${MAX_IDENTIFIERS_LENGTH}`,
    );
  }
  const params = new URLSearchParams(value);
  const lists: Record<string, string[]> = { host: [], ipv4: [], ipv6: [], cidr: [] };
  let defaultRoute = false;
  for (const [key, raw] of params) {
    if (!(KNOWN_KEYS as readonly string[]).includes(key)) {
      throw new KnatsError(
        ErrorCode.BadConfig,
        `--agent-identifiers: unknown key ${JSON.stringify(key)} (known: ${KNOWN_KEYS.join(', ')})`,
      );
    }
    if (key === 'default-route') {
      if (raw !== 'true' && raw !== 'false') {
        throw new KnatsError(ErrorCode.BadConfig, `--agent-identifiers: default-route must be true or false`);
      }
      defaultRoute = raw === 'true';
      continue;
    }
    if (raw === '') throw new KnatsError(ErrorCode.BadConfig, `--agent-identifiers: empty value for ${key}`);
    lists[key]!.push(raw);
  }
  return {
    host: lists.host!,
    ipv4: lists.ipv4!,
    ipv6: lists.ipv6!,
    cidr: lists.cidr!,
    defaultRoute,
    text: params.toString(),
  };
}

/**
 * The identifiers as a set: pairs sorted and deduplicated, `default-route=false`
 * dropped (it is the default), so the same grant written in another order is
 * the same claim.
 */
export function canonicalIdentifiers(text: string): string {
  const pairs = [...new URLSearchParams(text)]
    .filter(([key, value]) => !(key === 'default-route' && value === 'false'))
    .map(([key, value]) => new URLSearchParams([[key, value]]).toString());
  return [...new Set(pairs)].sort().join('&');
}

/**
 * The last token of an agent's heartbeat subject: a hash of the identifiers
 * it claims. When the operator granted an agent's NATS user a set of
 * identifiers (`knats broker config --agent 'ID?host=...'`), that user may
 * publish heartbeats only under this token of the granted set, and a frontend
 * routes by a heartbeat's identifiers only if they hash to its subject's token:
 * an agent cannot claim what it was not granted.
 */
export function claimsToken(text: string): string {
  return createHash('sha256').update(canonicalIdentifiers(text)).digest('base64url').slice(0, 22);
}
