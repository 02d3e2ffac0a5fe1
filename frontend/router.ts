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
import { presenceLimits } from '../broker/presence.js';
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

const MAX_COMPILED = 2 * presenceLimits.maxPeers;

/** At most this many agents are tried for one destHost dial (each may cost an accept timeout). */
export const MAX_DESTHOST_AGENTS = 8;

/** One ipv4=/ipv6= address or cidr= network, shared by every agent that claims the same text. */
interface AddressEntry {
  /** Specificity of a match: EXACT for an address, prefix length + 1 for a network (a /0 still matches). */
  readonly score: number;
  readonly type: 'ipv4' | 'ipv6';
  readonly list: BlockList;
}

/**
 * An agent's identifiers compiled for matching: done once per distinct
 * identifiers text (when a heartbeat brings it), not per dial.
 */
export interface Routes {
  /** Host names, lower case. */
  readonly hosts: ReadonlySet<string>;
  /** Addresses and networks, most specific first. */
  readonly addresses: readonly AddressEntry[];
}

const addressEntries = new Map<string, AddressEntry | null>();

/** `ipv4`/`ipv6` address or `cidr` network as a shared entry; null if it does not parse. */
function addressEntry(kind: 'ipv4' | 'ipv6' | 'cidr', value: string): AddressEntry | null {
  const key = `${kind}=${value}`;
  let entry = addressEntries.get(key);
  if (entry !== undefined) return entry;
  const [network = '', bits] = kind === 'cidr' ? value.split('/') : [value];
  const family = isIP(network);
  const type = family === 4 ? 'ipv4' : 'ipv6';
  const prefix = Number(bits);
  entry = null;
  if (family !== 0 && (kind === 'cidr' ? Number.isInteger(prefix) : kind === type)) {
    const list = new BlockList();
    try {
      if (kind === 'cidr') list.addSubnet(network, prefix, type);
      else list.addAddress(network, type);
      entry = { score: kind === 'cidr' ? prefix + 1 : EXACT, type, list };
    } catch {
      entry = null;
    }
  }
  if (addressEntries.size >= MAX_COMPILED) addressEntries.clear();
  addressEntries.set(key, entry);
  return entry;
}

export function compileRoutes(ids: AgentIdentifiers): Routes {
  const addresses: AddressEntry[] = [];
  for (const kind of ['ipv4', 'ipv6', 'cidr'] as const) {
    for (const value of ids[kind]) {
      const entry = addressEntry(kind, value);
      if (entry) addresses.push(entry);
    }
  }
  addresses.sort((x, y) => y.score - x.score);
  return { hosts: new Set(ids.host.map((h) => h.toLowerCase())), addresses };
}

/**
 * One dial's destination, prepared once: the address checks it makes are
 * remembered per shared entry, so a thousand agents claiming the same
 * network cost one check.
 */
export class DialDestination {
  readonly lower: string;
  readonly type: 'ipv4' | 'ipv6' | undefined;
  private readonly checked = new Map<AddressEntry, boolean>();
  constructor(readonly host: string) {
    this.lower = host.toLowerCase();
    const family = isIP(host);
    this.type = family === 4 ? 'ipv4' : family === 6 ? 'ipv6' : undefined;
  }
  within(entry: AddressEntry): boolean {
    let hit = this.checked.get(entry);
    if (hit === undefined) {
      hit = entry.type === this.type && entry.list.check(this.host, entry.type);
      this.checked.set(entry, hit);
    }
    return hit;
  }
}

/** How specifically an agent claims the destination; 0 when it does not. */
export function matchSpecificity(routes: Routes, destination: DialDestination): number {
  if (routes.hosts.has(destination.lower)) return EXACT;
  if (destination.type === undefined) return 0;
  for (const entry of routes.addresses) if (destination.within(entry)) return entry.score;
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
  const scored: ScoredAgent[] = [];
  const destination = new DialDestination(host);
  for (const agent of agents) {
    const score = matchSpecificity(agent.routes, destination);
    if (score > 0) scored.push({ agent, score });
  }
  return bestAgents(scored, random);
}

interface ScoredAgent {
  agent: AgentCandidate;
  score: number;
}

/** The agents that claim a destination, best first (see agentsForHost). */
function bestAgents(scored: ScoredAgent[], random: () => number): string[] {
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

/** Compiled routes by identifiers text; twice the presence table's bound, so a full table does not thrash it. */
const compiledRoutes = new Map<string, Routes | null>();

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

/** The part of Presence the routing table reads. */
export interface FleetView {
  /** Bumped whenever a peer comes, goes or beats (its load, draining or identifiers may have changed). */
  readonly version: number;
  snapshot(): readonly {
    info: { id: string; role: string; identifiers: string; draining: boolean; openTunnels: number };
  }[];
}

/**
 * destHost routing over the live fleet, indexed when presence changes rather
 * than scanned per dial: agents by host name, and by each distinct address
 * or network entry (shared by every agent that claims it), so a dial looks
 * up its host and checks the few distinct entries, not every agent; and each
 * destination is scored once per table. Rebuilt lazily, on the first dial
 * after a change.
 */
export class FleetRoutes {
  private builtAt = -1;
  private byHost = new Map<string, AgentCandidate[]>();
  private byEntry = new Map<AddressEntry, AgentCandidate[]>();
  /** Destinations already scored against this table (dials go to the same few hosts again and again). */
  private byDestination = new Map<string, ScoredAgent[]>();

  constructor(
    private readonly fleet: FleetView,
    private readonly random: () => number = Math.random,
  ) {}

  agentsForHost(host: string): string[] {
    if (this.builtAt !== this.fleet.version) this.build();
    let scored = this.byDestination.get(host);
    if (!scored) {
      scored = this.score(host);
      if (this.byDestination.size >= MAX_COMPILED) this.byDestination.clear();
      this.byDestination.set(host, scored);
    }
    // bestAgents shuffles in place: the remembered list stays as it is.
    return bestAgents([...scored], this.random);
  }

  private score(host: string): ScoredAgent[] {
    const destination = new DialDestination(host);
    const best = new Map<AgentCandidate, number>();
    for (const agent of this.byHost.get(destination.lower) ?? []) best.set(agent, EXACT);
    if (destination.type !== undefined) {
      for (const [entry, agents] of this.byEntry) {
        if (!destination.within(entry)) continue;
        for (const agent of agents) if ((best.get(agent) ?? 0) < entry.score) best.set(agent, entry.score);
      }
    }
    return [...best].map(([agent, score]) => ({ agent, score }));
  }

  private build(): void {
    this.builtAt = this.fleet.version;
    this.byHost = new Map();
    this.byEntry = new Map();
    this.byDestination = new Map();
    const add = <K>(map: Map<K, AgentCandidate[]>, key: K, agent: AgentCandidate) => {
      const list = map.get(key);
      if (list) list.push(agent);
      else map.set(key, [agent]);
    };
    for (const agent of candidatesFrom(this.fleet.snapshot())) {
      for (const host of agent.routes.hosts) add(this.byHost, host, agent);
      for (const entry of agent.routes.addresses) add(this.byEntry, entry, agent);
    }
  }
}
