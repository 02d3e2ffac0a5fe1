/**
 * Routing strategies: which agents to try, in order, for one dial. The
 * frontend chooses every agent itself, from its presence view, and sends the
 * dial to that agent's own subject, which only that agent's credentials may
 * read: no agent can take a share of the dials beyond what the frontend gives
 * it (with a queue group, nats-server spreads messages per subscription, so
 * an agent that opened 200 subscriptions received 200/201 of the dials).
 *
 * - destHost: agents whose host/ipv4/ipv6 identifier equals the destination
 *   host, then (beyond upstream) agents whose cidr contains it, most specific
 *   prefix first.
 * - defaultRoute: agents that claim default-route=true.
 * - default: every agent.
 * Draining agents take no dials. Within a group the first pick is the better
 * of two random agents by load: the larger of the open tunnels the agent
 * reports and those this frontend has open or pending with it (heartbeats are
 * a few seconds old and come from the agent, so a burst of dials, or an agent
 * that reports no load, still gets only its share); the rest follow as
 * fallbacks, at most MAX_AGENTS_PER_STRATEGY each, an agent tried once per dial.
 * A strategy with no candidate falls through to the next; so does an agent
 * that does not answer (see BusDialer).
 */
import { BlockList, isIP } from 'node:net';
import { presenceLimits } from '../broker/bus/presence.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { type AgentIdentifiers, parseAgentIdentifiers } from '../broker/wire/identifiers.js';
import type { Subjects } from '../broker/wire/subjects.js';

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

/** An agent's load as this frontend sees it now, from its reported load. */
export type LoadOf = (agent: AgentCandidate) => number;

const reportedLoad: LoadOf = (agent) => agent.load;

export interface DialTarget {
  readonly strategy: ProxyStrategy;
  /** The dial subject of `agentId`, which only that agent may read. */
  readonly subject: string;
  readonly agentId: string;
}

/** Specificity of an exact host/IP match: above any CIDR prefix length (max 128). */
const EXACT = 1000;

const MAX_COMPILED = 2 * presenceLimits.maxPeers;

/**
 * How a dial went with an agent: it opened a tunnel; it answered with an
 * error of its dial (refused, DNS, ...: the destination's fault as likely as
 * its own); or it let the dial down (nobody reads its subject, silent past
 * the accept or dial timeout, draining, or an answer that was refused).
 */
export type AgentOutcome = 'opened' | 'dial-error' | 'let-down';

/** How long an agent that let a dial down is offered dials last (FleetRoutes.shun). */
export const SHUN_MS = 10_000;
/** How long a dial error counts as load, and at most how many count at once (FleetRoutes.countDialError). */
export const DIAL_ERROR_WEIGHT_MS = 10_000;
const MAX_COUNTED_DIAL_ERRORS = 64;

/** Agents remembered as having answered a dial (FleetRoutes.vouch), and how many of them follow a first pick. */
const MAX_VOUCHED = 64;
const VOUCHED_FALLBACKS = 2;

/** At most this many agents are tried per strategy for one dial (each may cost an accept timeout). */
export const MAX_AGENTS_PER_STRATEGY = 8;

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
  /** default-route=true: a candidate of the defaultRoute strategy. */
  readonly defaultRoute: boolean;
}

/** An agent without identifiers (or with ones this build cannot read): the default strategy only. */
const NO_ROUTES: Routes = { hosts: new Set(), addresses: [], defaultRoute: false };

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
  return { hosts: new Set(ids.host.map((h) => h.toLowerCase())), addresses, defaultRoute: ids.defaultRoute };
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
 * Agents for destHost, best first, at most MAX_AGENTS_PER_STRATEGY: the most
 * specific group, with its first pick by the power of two choices, then the
 * rest as fallbacks.
 */
export function agentsForHost(
  agents: readonly AgentCandidate[],
  host: string,
  random: () => number = Math.random,
  loadOf: LoadOf = reportedLoad,
): string[] {
  const scored: ScoredAgent[] = [];
  const destination = new DialDestination(host);
  for (const agent of agents) {
    const score = matchSpecificity(agent.routes, destination);
    if (score > 0) scored.push({ agent, score });
  }
  return bestAgents(scored, random, loadOf);
}

interface ScoredAgent {
  agent: AgentCandidate;
  score: number;
}

/** The agents that claim a destination, best first (see agentsForHost). */
function bestAgents(scored: ScoredAgent[], random: () => number, loadOf: LoadOf): string[] {
  if (scored.length === 0) return [];
  // Shuffle, then a stable sort by specificity keeps ties in random order.
  for (let i = scored.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [scored[i], scored[j]] = [scored[j]!, scored[i]!];
  }
  scored.sort((a, b) => b.score - a.score);
  const bestScore = scored[0]!.score;
  const tied = scored.filter((s) => s.score === bestScore).length;
  if (tied >= 2 && loadOf(scored[1]!.agent) < loadOf(scored[0]!.agent)) {
    [scored[0], scored[1]] = [scored[1]!, scored[0]!];
  }
  return scored.slice(0, MAX_AGENTS_PER_STRATEGY).map((s) => s.agent.id);
}

/**
 * Up to MAX_AGENTS_PER_STRATEGY agents of a group in random order, the
 * better of the first two by load first. Shuffles only the positions it
 * returns, in place: the group is the table's own array, whose order does
 * not matter, so a dial among 20,000 agents costs a few random numbers.
 */
function pickAgents(group: AgentCandidate[], random: () => number, loadOf: LoadOf): string[] {
  const count = Math.min(group.length, MAX_AGENTS_PER_STRATEGY);
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(random() * (group.length - i));
    [group[i], group[j]] = [group[j]!, group[i]!];
  }
  if (count >= 2 && loadOf(group[1]!) < loadOf(group[0]!)) [group[0], group[1]] = [group[1]!, group[0]!];
  return group.slice(0, count).map((agent) => agent.id);
}

/**
 * The agents to try, in order: each strategy's picks in the configured
 * order, an agent that an earlier strategy already listed skipped (it was
 * tried and did not take the dial).
 */
export function dialTargets(
  strategies: readonly ProxyStrategy[],
  subjects: Subjects,
  agentsFor: (strategy: ProxyStrategy, host: string) => readonly string[],
  host: string,
): DialTarget[] {
  const targets: DialTarget[] = [];
  const listed = new Set<string>();
  for (const strategy of strategies) {
    for (const agentId of agentsFor(strategy, host)) {
      if (listed.has(agentId)) continue;
      listed.add(agentId);
      targets.push({ strategy, subject: subjects.dialAgent(agentId), agentId });
    }
  }
  return targets;
}

/** Compiled routes by identifiers text; twice the presence table's bound, so a full table does not thrash it. */
const compiledRoutes = new Map<string, Routes | null>();

function routesOf(text: string): Routes | null {
  if (!text) return NO_ROUTES;
  let routes = compiledRoutes.get(text);
  if (routes === undefined) {
    try {
      routes = compileRoutes(parseAgentIdentifiers(text));
    } catch {
      routes = null; // an agent of a newer version with keys we do not know: the default strategy only
    }
    if (compiledRoutes.size >= MAX_COMPILED) compiledRoutes.clear();
    compiledRoutes.set(text, routes);
  }
  return routes;
}

/**
 * Agents that take new dials, from presence. Identifiers arrive as text in
 * heartbeats; each distinct text is parsed and compiled once. An agent known
 * only from a dial (provisional: no heartbeat yet) is not offered dials.
 */
export function candidatesFrom(peers: readonly FleetPeer[]): AgentCandidate[] {
  const candidates: AgentCandidate[] = [];
  for (const { info, provisional } of peers) {
    if (info.role !== 'agent' || info.draining || provisional) continue;
    candidates.push({ id: info.id, routes: routesOf(info.identifiers) ?? NO_ROUTES, load: info.openTunnels });
  }
  return candidates;
}

/** A presence table entry, as routing reads it. */
export interface FleetPeer {
  readonly info: { id: string; role: string; identifiers: string; draining: boolean; openTunnels: number };
  readonly provisional?: boolean;
}

/** The part of Presence the routing table reads. */
export interface FleetView {
  /** Bumped whenever a peer comes, goes or beats (its load, draining or identifiers may have changed). */
  readonly version: number;
  snapshot(): readonly FleetPeer[];
}

/**
 * Routing over the live fleet, indexed when presence changes rather than
 * scanned per dial: every agent, the default-route agents, and for destHost
 * agents by host name and by each distinct address or network entry (shared
 * by every agent that claims it), so a dial looks up its host and checks the
 * few distinct entries, not every agent; and each destination is scored once
 * per table. Rebuilt lazily, on the first dial after a change.
 */
export class FleetRoutes {
  private builtAt = -1;
  private all: AgentCandidate[] = [];
  private defaultRoute: AgentCandidate[] = [];
  private byHost = new Map<string, AgentCandidate[]>();
  private byEntry = new Map<AddressEntry, AgentCandidate[]>();
  /** Destinations already scored against this table (dials go to the same few hosts again and again). */
  private byDestination = new Map<string, ScoredAgent[]>();
  /** Agents that opened a tunnel for this frontend lately, least recent first. */
  private readonly vouched = new Map<string, true>();
  private byId = new Map<string, AgentCandidate>();
  /** When each of an agent's recent dial errors stops counting as load (countDialError). */
  private readonly dialErrors = new Map<string, number[]>();
  /** Agents that let a dial down lately (see AgentOutcome), until when: offered dials last. */
  private readonly shunnedUntil = new Map<string, number>();
  private readonly loadOf: LoadOf;

  /**
   * `localLoad`: the tunnels this frontend has open or being dialed with an
   * agent, which it knows first-hand; an agent's load is the larger of that
   * and what it reports.
   */
  constructor(
    private readonly fleet: FleetView,
    private readonly random: () => number = Math.random,
    localLoad: (agentId: string) => number = () => 0,
  ) {
    this.loadOf = (agent) =>
      this.shunned(agent.id)
        ? Number.MAX_SAFE_INTEGER
        : Math.max(agent.load, localLoad(agent.id)) + this.recentDialErrors(agent.id);
  }

  /** What a dial with an agent came to (BusDialer's onAgentOutcome). */
  record(agentId: string, outcome: AgentOutcome, now = Date.now()): void {
    if (outcome === 'opened') this.vouch(agentId);
    else if (outcome === 'let-down') this.shun(agentId, now);
    else this.countDialError(agentId, now);
  }

  /**
   * A dial error counts as one tunnel of load for DIAL_ERROR_WEIGHT_MS: an
   * agent that fails its dials at once holds no tunnels, so by its load it
   * would look the idlest and win every two-choice it is in (two thirds of
   * the dials with three agents). With this, an agent's failures weigh like
   * the tunnels its peers hold; where the destination is to blame, every
   * agent offered it collects the same errors.
   */
  private countDialError(agentId: string, now: number): void {
    const until = now + DIAL_ERROR_WEIGHT_MS;
    const errors = (this.dialErrors.get(agentId) ?? []).filter((t) => t > now);
    errors.push(until);
    if (errors.length > MAX_COUNTED_DIAL_ERRORS) errors.shift();
    if (!this.dialErrors.has(agentId) && this.dialErrors.size >= MAX_COMPILED) this.forgetDialErrors(now);
    this.dialErrors.set(agentId, errors);
  }

  private recentDialErrors(agentId: string): number {
    const errors = this.dialErrors.get(agentId);
    if (!errors) return 0;
    const now = Date.now();
    let count = 0;
    for (const until of errors) if (until > now) count++;
    return count;
  }

  private forgetDialErrors(now: number): void {
    for (const [agentId, errors] of this.dialErrors) {
      if (errors[errors.length - 1]! <= now) this.dialErrors.delete(agentId);
    }
  }

  /**
   * An agent let a dial down (see AgentOutcome): for SHUN_MS it is picked
   * first only when both random choices are such agents, and stays a
   * fallback otherwise. So an agent that drops
   * the dials it gets costs a frontend about one accept timeout per SHUN_MS,
   * not one per dial it is offered.
   */
  shun(agentId: string, now = Date.now()): void {
    for (const [id, until] of this.shunnedUntil) if (until <= now) this.shunnedUntil.delete(id);
    this.shunnedUntil.set(agentId, now + SHUN_MS);
    this.vouched.delete(agentId);
  }

  private shunned(agentId: string): boolean {
    const until = this.shunnedUntil.get(agentId);
    return until !== undefined && until > Date.now();
  }

  /** The agents to offer a dial to `host` under `strategy`, best first. */
  agentsFor(strategy: ProxyStrategy, host: string): string[] {
    if (this.builtAt !== this.fleet.version) this.build();
    switch (strategy) {
      case 'destHost':
        return this.agentsForHost(host);
      case 'defaultRoute':
        return this.withVouched(pickAgents(this.defaultRoute, this.random, this.loadOf), true);
      case 'default':
        return this.withVouched(pickAgents(this.all, this.random, this.loadOf), false);
    }
  }

  /**
   * An agent opened a tunnel for this frontend: it is real and serves its
   * dials (an error answer does not count: an agent could fail every dial
   * and stay vouched). Where heartbeats cannot be bound to credentials
   * (shared agent users, no authentication), anyone can fill the table
   * with agents that do not exist; the random picks may then all be such,
   * and an agent that opened a tunnel lately, tried right after the first
   * pick, still takes the dial.
   */
  vouch(agentId: string): void {
    this.vouched.delete(agentId);
    this.vouched.set(agentId, true);
    if (this.vouched.size > MAX_VOUCHED) this.vouched.delete(this.vouched.keys().next().value!);
  }

  /** `picks` with up to VOUCHED_FALLBACKS vouched agents right after the first. */
  private withVouched(picks: string[], defaultRouteOnly: boolean): string[] {
    if (picks.length === 0) return picks;
    const fallbacks: string[] = [];
    for (const agentId of this.vouched.keys()) {
      const agent = this.byId.get(agentId);
      if (!agent || (defaultRouteOnly && !agent.routes.defaultRoute)) continue;
      if (this.shunned(agentId) || picks[0] === agentId) continue;
      fallbacks.push(agentId);
      if (fallbacks.length === VOUCHED_FALLBACKS) break;
    }
    if (fallbacks.length === 0) return picks;
    const rest = picks.slice(1).filter((agentId) => !fallbacks.includes(agentId));
    return [picks[0]!, ...fallbacks, ...rest];
  }

  agentsForHost(host: string): string[] {
    if (this.builtAt !== this.fleet.version) this.build();
    let scored = this.byDestination.get(host);
    if (!scored) {
      scored = this.score(host);
      if (this.byDestination.size >= MAX_COMPILED) this.byDestination.clear();
      this.byDestination.set(host, scored);
    }
    // bestAgents shuffles in place: the remembered list stays as it is.
    return bestAgents([...scored], this.random, this.loadOf);
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
    this.all = candidatesFrom(this.fleet.snapshot());
    this.byId = new Map(this.all.map((agent) => [agent.id, agent]));
    this.defaultRoute = this.all.filter((agent) => agent.routes.defaultRoute);
    const add = <K>(map: Map<K, AgentCandidate[]>, key: K, agent: AgentCandidate) => {
      const list = map.get(key);
      if (list) list.push(agent);
      else map.set(key, [agent]);
    };
    for (const agent of this.all) {
      for (const host of agent.routes.hosts) add(this.byHost, host, agent);
      for (const entry of agent.routes.addresses) add(this.byEntry, entry, agent);
    }
  }
}
