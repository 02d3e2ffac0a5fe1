/**
 * Routing strategies: which dial subjects to try, in order, for one dial.
 * Pure over the configured strategies, the destination host and a snapshot of
 * the agents known from presence.
 *
 * - destHost: agents whose host/ipv4/ipv6 identifier equals the destination
 *   host, then (beyond upstream) agents whose cidr contains it, most specific
 *   prefix first. Among equally specific agents the load is spread with the
 *   power of two choices (heartbeat load figures are a few seconds old, so
 *   "always the least loaded" would send a burst of dials to one agent).
 * - defaultRoute: the queue group of agents with default-route=true.
 * - default: the queue group of all agents.
 * A strategy with no candidate falls through to the next; "no responders"
 * on a subject does too (see BusDialer).
 */
import { BlockList, isIP } from 'node:net';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { type AgentIdentifiers, parseAgentIdentifiers } from '../broker/identifiers.js';
import type { Subjects } from '../broker/subjects.js';

export const STRATEGIES = ['default', 'destHost', 'defaultRoute'] as const;
export type ProxyStrategy = (typeof STRATEGIES)[number];

export function parseStrategies(value: string): ProxyStrategy[] {
  const list = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (list.length === 0) throw new KnatsError(ErrorCode.BadConfig, '--proxy-strategies: empty list');
  for (const s of list) {
    if (!(STRATEGIES as readonly string[]).includes(s)) {
      throw new KnatsError(
        ErrorCode.BadConfig,
        `--proxy-strategies: unknown strategy ${JSON.stringify(s)} (known: ${STRATEGIES.join(', ')})`,
      );
    }
  }
  return list as ProxyStrategy[];
}

export interface AgentCandidate {
  readonly id: string;
  readonly identifiers: AgentIdentifiers;
  /** Open tunnels, from its last heartbeat. */
  readonly load: number;
}

export interface DialTarget {
  readonly strategy: ProxyStrategy;
  readonly subject: string;
}

/** Specificity of an exact host/IP match: above any CIDR prefix length (max 128). */
const EXACT = 1000;

/** How specifically `agent` claims `host`; 0 when it does not. */
export function matchSpecificity(agent: AgentIdentifiers, host: string): number {
  const lower = host.toLowerCase();
  if (agent.host.some((h) => h.toLowerCase() === lower)) return EXACT;
  const family = isIP(host);
  if (family === 0) return 0;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  const exact = new BlockList();
  for (const ip of family === 4 ? agent.ipv4 : agent.ipv6) {
    if (isIP(ip) === family) exact.addAddress(ip, type);
  }
  if (exact.check(host, type)) return EXACT;
  let best = 0;
  for (const cidr of agent.cidr) {
    const [network, bits] = cidr.split('/');
    const prefix = Number(bits);
    if (!network || isIP(network) !== family || !Number.isInteger(prefix)) continue;
    const list = new BlockList();
    try {
      list.addSubnet(network, prefix, type);
    } catch {
      continue;
    }
    // +1 so that a /0 still counts as a match.
    if (list.check(host, type)) best = Math.max(best, prefix + 1);
  }
  return best;
}

/**
 * Agents for destHost, best first: the most specific group, with its first
 * pick by the power of two choices, then the rest as fallbacks.
 */
export function agentsForHost(
  agents: readonly AgentCandidate[],
  host: string,
  random: () => number = Math.random,
): string[] {
  const scored = agents
    .map((agent) => ({ agent, score: matchSpecificity(agent.identifiers, host) }))
    .filter((s) => s.score > 0);
  if (scored.length === 0) return [];
  // Shuffle, then a stable sort by specificity keeps ties in random order.
  for (let i = scored.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [scored[i], scored[j]] = [scored[j]!, scored[i]!];
  }
  scored.sort((a, b) => b.score - a.score);
  const bestScore = scored[0]!.score;
  const tied = scored.filter((s) => s.score === bestScore).length;
  if (tied >= 2 && scored[1]!.agent.load < scored[0]!.agent.load) {
    [scored[0], scored[1]] = [scored[1]!, scored[0]!];
  }
  return scored.map((s) => s.agent.id);
}

/** The subjects to try, in order. */
export function dialTargets(
  strategies: readonly ProxyStrategy[],
  subjects: Subjects,
  destHostAgents: (host: string) => readonly string[],
  host: string,
): DialTarget[] {
  const targets: DialTarget[] = [];
  for (const strategy of strategies) {
    switch (strategy) {
      case 'destHost':
        for (const agentId of destHostAgents(host)) {
          targets.push({ strategy, subject: subjects.dialAgent(agentId) });
        }
        break;
      case 'defaultRoute':
        targets.push({ strategy, subject: subjects.dialRoute() });
        break;
      case 'default':
        targets.push({ strategy, subject: subjects.dialAny() });
        break;
    }
  }
  return targets;
}

const parsedIdentifiers = new Map<string, AgentIdentifiers>();

/**
 * Agents that take new dials, from presence. Identifiers arrive as text in
 * heartbeats; each distinct text is parsed once.
 */
export function candidatesFrom(
  peers: readonly {
    info: { id: string; role: string; identifiers: string; draining: boolean; openTunnels: number };
  }[],
): AgentCandidate[] {
  const candidates: AgentCandidate[] = [];
  for (const { info } of peers) {
    if (info.role !== 'agent' || info.draining || !info.identifiers) continue;
    let identifiers = parsedIdentifiers.get(info.identifiers);
    if (!identifiers) {
      try {
        identifiers = parseAgentIdentifiers(info.identifiers);
      } catch {
        continue; // an agent of a newer version with keys we do not know: not routable by destHost
      }
      if (parsedIdentifiers.size > 10_000) parsedIdentifiers.clear();
      parsedIdentifiers.set(info.identifiers, identifiers);
    }
    candidates.push({ id: info.id, identifiers, load: info.openTunnels });
  }
  return candidates;
}
