/**
 * --agent-identifiers, in upstream's URL query syntax:
 * `host=a&host=b&ipv4=10.0.0.1&ipv6=::1&cidr=10.0.0.0/8&default-route=true`.
 */
import { ErrorCode, KnatsError } from './errors.js';

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
