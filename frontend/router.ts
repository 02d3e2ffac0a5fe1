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
  readonly routes: Routes;
  /** Open tunnels, from its last heartbeat. */
  readonly load: number;
}

export interface DialTarget {
  readonly strategy: ProxyStrategy;
  readonly subject: string;
  /** The one agent listening on `subject` (destHost); absent for queue groups. */
  readonly agentId?: string;
}

/** Specificity of an exact host/IP match: above any CIDR prefix length (max 128). */
const EXACT = 1000;

/** At most this many agents are tried for one destHost dial (each may cost an accept timeout). */
export const MAX_DESTHOST_AGENTS = 8;

/**
 * An agent's identifiers compiled for matching: done once per distinct
 * identifiers text (when a heartbeat brings it), not per dial, so a dial
 * costs a set lookup and a few prefix checks per agent.
 */
export interface Routes {
  /** Host names, lower case. */
  readonly hosts: ReadonlySet<string>;
  /** ipv4= and ipv6= addresses. */
  readonly exact: BlockList;
  /** cidr= entries, longest prefix first. */
  readonly cidrs: readonly {
    readonly bits: number;
    readonly type: 'ipv4' | 'ipv6';
    readonly list: BlockList;
  }[];
}

export function compileRoutes(ids: AgentIdentifiers): Routes {
  const exact = new BlockList();
  for (const ip of ids.ipv4) if (isIP(ip) === 4) exact.addAddress(ip, 'ipv4');
  for (const ip of ids.ipv6) if (isIP(ip) === 6) exact.addAddress(ip, 'ipv6');
  const cidrs: { bits: number; type: 'ipv4' | 'ipv6'; list: BlockList }[] = [];
  for (const cidr of ids.cidr) {
    const [network, bits] = cidr.split('/');
    const prefix = Number(bits);
    const family = network ? isIP(network) : 0;
    if (family === 0 || !Number.isInteger(prefix)) continue;
    const type = family === 4 ? 'ipv4' : 'ipv6';
    const list = new BlockList();
    try {
      list.addSubnet(network!, prefix, type);
    } catch {
      continue;
    }
    cidrs.push({ bits: prefix, type, list });
  }
  cidrs.sort((x, y) => y.bits - x.bits);
  return { hosts: new Set(ids.host.map((h) => h.toLowerCase())), exact, cidrs };
}

/** How specifically an agent claims `host`; 0 when it does not. */
export function matchSpecificity(routes: Routes, host: string): number {
  if (routes.hosts.has(host.toLowerCase())) return EXACT;
  const family = isIP(host);
  if (family === 0) return 0;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (routes.exact.check(host, type)) return EXACT;
  for (const { bits, type: cidrType, list } of routes.cidrs) {
    // +1 so that a /0 still counts as a match.
    if (cidrType === type && list.check(host, type)) return bits + 1;
  }
  return 0;
}

/**
 * Agents for destHost, best first, at most MAX_DESTHOST_AGENTS: the most
 * specific group, with its first pick by the power of two choices, then the
 * rest as fallbacks.
 */
export function agentsForHost(
  agents: readonly AgentCandidate[],
  host: string,
  random: () => number = Math.random,
): string[] {
  const scored: { agent: AgentCandidate; score: number }[] = [];
  for (const agent of agents) {
    const score = matchSpecificity(agent.routes, host);
    if (score > 0) scored.push({ agent, score });
  }
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
  return scored.slice(0, MAX_DESTHOST_AGENTS).map((s) => s.agent.id);
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
          targets.push({ strategy, subject: subjects.dialAgent(agentId), agentId });
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

/** Compiled routes by identifiers text; bounded like the presence table it mirrors. */
const compiledRoutes = new Map<string, Routes | null>();
const MAX_COMPILED = 4096;

function routesOf(text: string): Routes | null {
  let routes = compiledRoutes.get(text);
  if (routes === undefined) {
    try {
      routes = compileRoutes(parseAgentIdentifiers(text));
    } catch {
      routes = null; // an agent of a newer version with keys we do not know: not routable by destHost
    }
    if (compiledRoutes.size >= MAX_COMPILED) compiledRoutes.clear();
    compiledRoutes.set(text, routes);
  }
  return routes;
}

/**
 * Agents that take new dials, from presence. Identifiers arrive as text in
 * heartbeats; each distinct text is parsed and compiled once.
 */
export function candidatesFrom(
  peers: readonly {
    info: { id: string; role: string; identifiers: string; draining: boolean; openTunnels: number };
  }[],
): AgentCandidate[] {
  const candidates: AgentCandidate[] = [];
  for (const { info } of peers) {
    if (info.role !== 'agent' || info.draining || !info.identifiers) continue;
    const routes = routesOf(info.identifiers);
    if (routes) candidates.push({ id: info.id, routes, load: info.openTunnels });
  }
  return candidates;
}
