/**
 * Opens tunnels over the bus: one NATS request to a dial subject, answered by
 * an agent that dialed the destination (or failed to, with a reason code).
 * Shared by every front door (gRPC, HTTP CONNECT).
 */
import { randomBytes } from 'node:crypto';
import { type NatsConnection, NoRespondersError, TimeoutError } from '@nats-io/transport-node';
import { parseDialAddress } from '../broker/address.js';
import { ErrorCode, errorFromPeer, isKnatsError, KnatsError } from '../broker/errors.js';
import { LogThrottle } from '../broker/log-throttle.js';
import type { Logger } from '../broker/logging.js';
import type { DialTimeline } from '../broker/telemetry/dial-stages.js';
import { noTracing, type TraceSpan, type Tracing, traced } from '../broker/telemetry/tracing.js';
import type { Tunnel } from '../broker/tunnel/tunnel.js';
import type { TunnelHost } from '../broker/tunnel/tunnel-host.js';
import {
  type BusDialResponse,
  dialRequestCodec,
  dialResponseCodec,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
} from '../broker/wire/bus-messages.js';
import { isToken, type Subjects } from '../broker/wire/subjects.js';
import { type AgentOutcome, type DialTarget, dialTargets, type ProxyStrategy } from './router.js';

export interface BusDialerOptions {
  readonly nc: NatsConnection;
  readonly host: TunnelHost;
  readonly subjects: Subjects;
  readonly frontendId: string;
  readonly strategies: readonly ProxyStrategy[];
  /** The agents a strategy offers a dial to `host`, best first (FleetRoutes.agentsFor). */
  readonly agentsFor: (strategy: ProxyStrategy, host: string) => readonly string[];
  /** The agent's TCP dial timeout; the bus request waits a little longer. */
  readonly dialTimeoutMs: number;
  /** An agent that has not acknowledged a dial within this is taken for dead. */
  readonly acceptTimeoutMs: number;
  /** Dials in flight in this process; beyond it, dials fail at once. */
  readonly maxPendingDials: number;
  /** Why the bus cannot carry a dial now (undefined when it can): such dials fail at once. */
  readonly busUnavailable?: () => string | undefined;
  readonly logger: Logger;
  /** The peer id of an answered dial, so its heartbeats are tracked. */
  readonly onAgentUsed: (agentId: string) => void;
  /** A dial answer refused as not from the agent it was sent to (or not a sane answer at all). */
  readonly onBadReply?: () => void;
  /** How a dial went with an agent, for routing (FleetRoutes.record). */
  readonly onAgentOutcome?: (agentId: string, outcome: AgentOutcome) => void;
  /** Spans of each dial; the tunnel's root span ends with the tunnel. Default: none. */
  readonly tracing?: Tracing;
}

/**
 * Where a dial logs: the door's logger and the fields that name the dial
 * there (the gRPC random, ...). Each tunnel end gets one child of it with
 * every field, never a child of a child: pino's nested children cost tens of
 * microseconds per dial once a line is written through them.
 */
export interface DialLog {
  readonly logger: Logger;
  readonly fields: Readonly<Record<string, unknown>>;
}

export interface DialOutcome {
  readonly tunnel: Tunnel;
  /** Every field of the tunnel's log lines (door fields, tunnelId, frontendId, destination, agentId). */
  readonly logFields: Readonly<Record<string, unknown>>;
  readonly agentId: string;
  readonly strategy: ProxyStrategy;
}

/** Margin over the agent's dial timeout for the bus round trip. */
const BUS_MARGIN_MS = 1000;

/** A refused answer is logged at most once per agent per this long (it is counted every time). */
const BAD_REPLY_LOG_INTERVAL_MS = 60_000;

export class BusDialer {
  private readonly options: BusDialerOptions;
  private pending = 0;
  /** Dials in flight per agent: part of the load routing sees (a burst must not all pick one agent). */
  private readonly pendingByAgent = new Map<string, number>();
  /** Refused answers are logged once per agent per minute. */
  private readonly badReplyLog = new LogThrottle(BAD_REPLY_LOG_INTERVAL_MS);

  constructor(options: BusDialerOptions) {
    this.options = options;
  }

  get pendingDials(): number {
    return this.pending;
  }

  /** Dials this frontend is waiting on with `agentId`. */
  pendingWith(agentId: string): number {
    return this.pendingByAgent.get(agentId) ?? 0;
  }

  /**
   * Dials `address` through an agent. Resolves with an open tunnel, or
   * rejects with a KnatsError. If `signal` aborts first (DIAL_CLS, client
   * gone), rejects with DialCancelled and closes whatever the agent opened.
   *
   * Targets are tried in order: "no responders" falls through to the next.
   * An agent answers after its TCP dial, and acknowledges first (ACCEPTED
   * frame) a dial it cannot answer within half of `acceptTimeoutMs` (which
   * the request tells it); one that does neither within `acceptTimeoutMs` is
   * taken for dead (a crashed or partitioned agent the NATS server has not
   * noticed yet still receives requests), so the dial moves on instead of
   * waiting the whole dial timeout. Each attempt uses a fresh tunnel id, so
   * a late answer from the slow agent can never be confused with the new one.
   */
  async dial(
    address: string,
    protocol: string,
    log: DialLog,
    timeline: DialTimeline,
    signal?: AbortSignal,
  ): Promise<DialOutcome> {
    const tracing = this.options.tracing ?? noTracing;
    const span = tracing.start('knats.tunnel', {
      'knats.destination': address,
      'knats.frontend_id': this.options.frontendId,
    });
    try {
      const outcome = await this.dialThroughTargets(address, protocol, log, span, timeline, signal);
      span.set({ 'knats.tunnel_id': outcome.tunnel.id, 'knats.agent_id': outcome.agentId });
      tracing.bindTunnel(outcome.tunnel, span);
      return outcome;
    } catch (err) {
      span.end(err);
      throw err;
    }
  }

  private async dialThroughTargets(
    address: string,
    protocol: string,
    log: DialLog,
    span: TraceSpan,
    timeline: DialTimeline,
    signal: AbortSignal | undefined,
  ): Promise<DialOutcome> {
    const busDown = this.options.busUnavailable?.();
    if (busDown) throw new KnatsError(ErrorCode.BusUnavailable, busDown);
    if (this.pending >= this.options.maxPendingDials) {
      throw new KnatsError(
        ErrorCode.TooManyPendingDials,
        `${this.pending} dials already pending on this frontend (limit ${this.options.maxPendingDials})`,
      );
    }
    // A bad address is answered here, without a bus round trip (the agent checks again: the bus is not trusted).
    const { host } = parseDialAddress(address);
    const route = span.child('knats.route', { 'knats.strategies': this.options.strategies.join(',') });
    const targets = dialTargets(this.options.strategies, this.options.subjects, this.options.agentsFor, host);
    route.set({ 'knats.targets': targets.map((t) => t.agentId).join(',') });
    route.end();
    timeline.mark('route');
    this.pending++;
    try {
      // Each agent once: one that is gone, unresponsive, draining or answers wrongly passes the dial on.
      for (const [index, target] of targets.entries()) {
        if (signal?.aborted) throw new KnatsError(ErrorCode.DialCancelled, 'client cancelled the dial');
        const outcome = await this.attemptTraced(
          target,
          index + 1,
          address,
          protocol,
          log,
          span,
          timeline,
          signal,
        );
        if (outcome !== 'next-agent') return outcome;
      }
      throw new KnatsError(ErrorCode.NoAgent, 'No agent available');
    } finally {
      this.pending--;
    }
  }

  /** One attempt as a bus request span, whose context the agent's spans continue. */
  private async attemptTraced(
    target: DialTarget,
    attempt: number,
    address: string,
    protocol: string,
    log: DialLog,
    parent: TraceSpan,
    timeline: DialTimeline,
    signal: AbortSignal | undefined,
  ): Promise<DialOutcome | 'next-agent'> {
    const tunnelId = newTunnelId();
    const span = parent.child(
      'knats.bus_request',
      {
        'messaging.destination.name': target.subject,
        'knats.strategy': target.strategy,
        'knats.attempt': attempt,
        'knats.tunnel_id': tunnelId,
      },
      'client',
    );
    const agentId = target.agentId;
    this.pendingByAgent.set(agentId, this.pendingWith(agentId) + 1);
    try {
      return await traced(
        span,
        this.attempt(tunnelId, target, address, protocol, log, span.traceparent, timeline, signal),
        (outcome) => ({ 'knats.outcome': typeof outcome === 'string' ? outcome : 'open' }),
      );
    } finally {
      const left = this.pendingWith(agentId) - 1;
      if (left > 0) this.pendingByAgent.set(agentId, left);
      else this.pendingByAgent.delete(agentId);
    }
  }

  private async attempt(
    tunnelId: string,
    target: DialTarget,
    address: string,
    protocol: string,
    log: DialLog,
    traceparent: string | undefined,
    timeline: DialTimeline,
    signal: AbortSignal | undefined,
  ): Promise<DialOutcome | 'next-agent'> {
    const { host, subjects, frontendId } = this.options;
    const fields = { ...log.fields, tunnelId, frontendId, destination: address };
    const tunnelLogger = log.logger.child(fields);
    const tunnel = host.create(tunnelId, subjects.frontendTunnel(frontendId, tunnelId), tunnelLogger);
    try {
      const request = dialRequestCodec.encode({
        protocolVersion: PROTOCOL_VERSION,
        tunnelId,
        protocol,
        address,
        frontendId,
        initialWindow: tunnel.initialWindow,
        dialTimeoutMs: this.options.dialTimeoutMs,
        traceparent,
        acceptTimeoutMs: this.options.acceptTimeoutMs,
      });
      const accepted = new Promise<'accepted'>((resolve) => {
        tunnel.onAccepted = () => resolve('accepted');
      });
      const answer = this.request(target.subject, request, this.options.dialTimeoutMs + BUS_MARGIN_MS);
      timeline.mark('bus_out');
      let acceptTimer: NodeJS.Timeout | undefined;
      const unresponsive = new Promise<'unresponsive'>((resolve) => {
        acceptTimer = setTimeout(() => resolve('unresponsive'), this.options.acceptTimeoutMs);
      });
      const first = await Promise.race([accepted, answer, unresponsive]);
      clearTimeout(acceptTimer);
      if (first === 'unresponsive') {
        answer.catch(() => {}); // the abandoned request's late answer or timeout
        tunnelLogger.warn(
          { agentId: target.agentId, ms: this.options.acceptTimeoutMs },
          'agent did not acknowledge the dial; trying the next agent',
        );
        this.options.onAgentOutcome?.(target.agentId, 'let-down');
        return 'next-agent';
      }
      const reply = await answer.catch((err: unknown) => {
        // An honest agent answers within the dial timeout the request gave it (a timeout is an answer with
        // its code): silence past it and the margin after an acknowledgement is an agent that failed.
        if (isKnatsError(err) && err.code === ErrorCode.DialTimeout)
          this.options.onAgentOutcome?.(target.agentId, 'let-down');
        throw err;
      });
      // No reply: nobody reads the agent's subject (it left since its last heartbeat, or never was). A
      // draining agent may still get a dial that crossed its goodbye; one that says so for ever is shunned.
      const response = reply && this.checkedResponse(reply, tunnelId, target);
      if (!response || response.errorCode === ErrorCode.ShuttingDown) {
        this.options.onAgentOutcome?.(target.agentId, 'let-down');
        return 'next-agent';
      }
      timeline.markAnswer(response.stageMicros ?? []);
      const agentId = target.agentId;
      if (response.errorCode) {
        this.options.onAgentOutcome?.(agentId, 'dial-error');
        throw errorFromPeer(response.errorCode, response.errorMessage);
      }
      this.options.onAgentOutcome?.(agentId, 'opened');
      tunnel.open(
        agentId,
        subjects.agentTunnel(agentId, tunnelId),
        response.initialWindow,
        response.protocolVersion,
        log.logger.child({ ...fields, agentId }),
      );
      this.options.onAgentUsed(agentId);
      host.bindPeer(tunnel, false);
      if (signal?.aborted) {
        // The agent did open a socket: tell it to close instead of confirming.
        tunnel.close(new KnatsError(ErrorCode.DialCancelled, 'client cancelled the dial (DIAL_CLS)'));
        throw new KnatsError(ErrorCode.DialCancelled, 'client cancelled the dial');
      }
      // The first frame confirms the dial to the agent: the client's, or the host's WINDOW a tick later.
      host.confirmLater(tunnel);
      timeline.mark('bus_back');
      return { tunnel, logFields: { ...fields, agentId }, agentId, strategy: target.strategy };
    } finally {
      tunnel.onAccepted = undefined;
      if (!tunnel.isOpen && !tunnel.isClosed) tunnel.end(undefined);
    }
  }

  /**
   * The agent's answer, or undefined when it is refused: counted every time,
   * logged once per agent per minute (an agent that answers wrongly on
   * purpose must not flood the log), and the dial moves on to the next agent.
   */
  private checkedResponse(
    reply: Uint8Array,
    tunnelId: string,
    target: DialTarget,
  ): BusDialResponse | undefined {
    try {
      return decodeResponse(reply, tunnelId, target);
    } catch (err) {
      const error = isKnatsError(err) ? err : new KnatsError(ErrorCode.BadPeerMessage, String(err));
      this.options.onBadReply?.();
      const skipped = this.badReplyLog.take(target.agentId);
      if (skipped !== undefined) {
        this.options.logger.warn(
          { code: error.code, agentId: target.agentId, reason: error.message, skipped },
          'dial answer refused; trying the next agent (logged once per agent per minute)',
        );
      }
      return undefined;
    }
  }

  /** One NATS request; undefined when nobody listens on the subject. */
  private async request(
    subject: string,
    request: Uint8Array,
    timeout: number,
  ): Promise<Uint8Array | undefined> {
    try {
      return (await this.options.nc.request(subject, request, { timeout })).data;
    } catch (err) {
      if (err instanceof NoRespondersError || isNoResponders(err)) return undefined;
      if (err instanceof TimeoutError || isTimeout(err)) {
        throw new KnatsError(ErrorCode.DialTimeout, `no dial answer within ${timeout} ms`);
      }
      if (isKnatsError(err)) throw err;
      throw new KnatsError(ErrorCode.DialFailed, `dial request failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
}

/**
 * Tunnel ids are unguessable (128 random bits): agents may publish to
 * frontends' frame subjects, so an id that could be predicted would let one
 * agent inject frames into another agent's tunnel.
 */
export function newTunnelId(): string {
  return randomBytes(16).toString('base64url');
}

/**
 * The agent's answer, checked before any field is used. Who answered is the
 * agent the dial was sent to: only its credentials may read its dial subject
 * and answer what it read. The id in the body must say the same (an answer
 * naming another agent would have the frontend's frames, logs and metrics
 * blame that one), and the tunnel id must be the one asked for. A bad answer
 * throws BadPeerMessage (MalformedFrame when it does not decode).
 */
function decodeResponse(reply: Uint8Array, tunnelId: string, target: DialTarget): BusDialResponse {
  let response: BusDialResponse;
  try {
    response = dialResponseCodec.decode(reply);
  } catch (err) {
    throw new KnatsError(ErrorCode.MalformedFrame, 'malformed dial response', { cause: err });
  }
  if (response.agentId !== target.agentId) {
    const named = isToken(response.agentId)
      ? response.agentId
      : `an invalid id of ${response.agentId.length} characters`;
    throw new KnatsError(
      ErrorCode.BadPeerMessage,
      `dial sent to agent ${target.agentId} answered as ${named}`,
    );
  }
  if (response.tunnelId !== tunnelId) {
    throw new KnatsError(ErrorCode.BadPeerMessage, `agent ${target.agentId} answered for another tunnel id`);
  }
  if (response.protocolVersion < MIN_PROTOCOL_VERSION) {
    throw new KnatsError(
      ErrorCode.IncompatiblePeer,
      `agent ${target.agentId} speaks bus protocol ${response.protocolVersion}, need >= ${MIN_PROTOCOL_VERSION}`,
    );
  }
  return response;
}

function isNoResponders(err: unknown): boolean {
  return (err as { code?: string })?.code === '503' || /no responders/i.test(String((err as Error)?.message));
}

function isTimeout(err: unknown): boolean {
  return /timeout/i.test(String((err as Error)?.message));
}
