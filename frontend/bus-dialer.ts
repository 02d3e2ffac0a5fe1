/**
 * Opens tunnels over the bus: one NATS request to a dial subject, answered by
 * an agent that dialed the destination (or failed to, with a reason code).
 * Shared by every front door (gRPC, HTTP CONNECT).
 */
import { type NatsConnection, NoRespondersError, nuid, TimeoutError } from '@nats-io/transport-node';
import {
  type BusDialResponse,
  dialRequestCodec,
  dialResponseCodec,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
} from '../broker/bus-messages.js';
import { ErrorCode, isKnatsError, KnatsError, parseErrorCode } from '../broker/errors.js';
import type { Logger } from '../broker/logging.js';
import type { Subjects } from '../broker/subjects.js';
import type { Tunnel } from '../broker/tunnel.js';
import type { TunnelHost } from '../broker/tunnel-host.js';
import { type DialTarget, dialTargets, type ProxyStrategy } from './router.js';

export interface BusDialerOptions {
  readonly nc: NatsConnection;
  readonly host: TunnelHost;
  readonly subjects: Subjects;
  readonly frontendId: string;
  readonly strategies: readonly ProxyStrategy[];
  /** Agents whose identifiers match a destination host (destHost strategy). */
  readonly agentsForHost: (host: string) => readonly string[];
  /** The agent's TCP dial timeout; the bus request waits a little longer. */
  readonly dialTimeoutMs: number;
  /** Dials in flight in this process; beyond it, dials fail at once. */
  readonly maxPendingDials: number;
  readonly logger: Logger;
  /** The peer id of an answered dial, so its heartbeats are tracked. */
  readonly onAgentUsed: (agentId: string) => void;
}

export interface DialOutcome {
  readonly tunnel: Tunnel;
  readonly agentId: string;
  readonly strategy: ProxyStrategy;
}

/** Margin over the agent's dial timeout for the bus round trip. */
const BUS_MARGIN_MS = 1000;

export class BusDialer {
  private readonly options: BusDialerOptions;
  private pending = 0;

  constructor(options: BusDialerOptions) {
    this.options = options;
  }

  get pendingDials(): number {
    return this.pending;
  }

  /**
   * Dials `address` through an agent. Resolves with an open tunnel, or
   * rejects with a KnatsError. If `signal` aborts first (DIAL_CLS, client
   * gone), rejects with DialCancelled and closes whatever the agent opened.
   */
  async dial(address: string, protocol: string, logger: Logger, signal?: AbortSignal): Promise<DialOutcome> {
    const { host, subjects, frontendId } = this.options;
    if (this.pending >= this.options.maxPendingDials) {
      throw new KnatsError(
        ErrorCode.TooManyPendingDials,
        `${this.pending} dials already pending on this frontend (limit ${this.options.maxPendingDials})`,
      );
    }
    const hostname = splitHost(address);
    const targets = dialTargets(this.options.strategies, subjects, this.options.agentsForHost, hostname);
    const tunnelId = nuid.next();
    const tunnelLogger = logger.child({ tunnelId, frontendId, destination: address });
    const tunnel = host.create(tunnelId, subjects.frontendTunnel(frontendId, tunnelId), tunnelLogger);
    this.pending++;
    try {
      const request = dialRequestCodec.encode({
        protocolVersion: PROTOCOL_VERSION,
        tunnelId,
        protocol,
        address,
        frontendId,
        initialWindow: tunnel.initialWindow,
        dialTimeoutMs: this.options.dialTimeoutMs,
      });
      const { response, target } = await this.firstAnswer(targets, request, signal);
      const agentId = response.agentId;
      const agentLogger = tunnelLogger.child({ agentId });
      if (response.errorCode) {
        tunnel.end(undefined);
        throw new KnatsError(parseErrorCode(response.errorCode), response.errorMessage || response.errorCode);
      }
      tunnel.open(agentId, subjects.agentTunnel(agentId, tunnelId), response.initialWindow, agentLogger);
      this.options.onAgentUsed(agentId);
      host.bindPeer(tunnel, false);
      // The first frame confirms the dial to the agent; a cancelled dial tells it to close instead.
      if (signal?.aborted) {
        tunnel.close(new KnatsError(ErrorCode.DialCancelled, 'client cancelled the dial (DIAL_CLS)'));
        throw new KnatsError(ErrorCode.DialCancelled, 'client cancelled the dial');
      }
      tunnel.sendInitialGrant();
      return { tunnel, agentId, strategy: target.strategy };
    } catch (err) {
      if (!tunnel.isClosed) tunnel.end(undefined);
      throw err;
    } finally {
      this.pending--;
    }
  }

  /**
   * Tries each target in order; "no responders" falls through to the next.
   * An abort does not cancel the NATS request: the answer is still awaited
   * (up to the timeout) so that an agent that did open a socket is told to
   * close it. Doors answer the client without waiting for this.
   */
  private async firstAnswer(
    targets: readonly DialTarget[],
    request: Uint8Array,
    signal: AbortSignal | undefined,
  ): Promise<{ response: BusDialResponse; target: DialTarget }> {
    const timeout = this.options.dialTimeoutMs + BUS_MARGIN_MS;
    for (const target of targets) {
      if (signal?.aborted) throw new KnatsError(ErrorCode.DialCancelled, 'client cancelled the dial');
      let reply: Uint8Array;
      try {
        const msg = await this.options.nc.request(target.subject, request, { timeout });
        reply = msg.data;
      } catch (err) {
        if (err instanceof NoRespondersError || isNoResponders(err)) continue;
        if (err instanceof TimeoutError || isTimeout(err)) {
          throw new KnatsError(ErrorCode.DialTimeout, `no dial answer within ${timeout} ms`);
        }
        if (isKnatsError(err)) throw err;
        throw new KnatsError(ErrorCode.DialFailed, `dial request failed: ${(err as Error).message}`, {
          cause: err,
        });
      }
      let response: BusDialResponse;
      try {
        response = dialResponseCodec.decode(reply);
      } catch (err) {
        throw new KnatsError(ErrorCode.MalformedFrame, 'malformed dial response', { cause: err });
      }
      if (response.protocolVersion < MIN_PROTOCOL_VERSION) {
        throw new KnatsError(
          ErrorCode.IncompatiblePeer,
          `agent ${response.agentId} speaks bus protocol ${response.protocolVersion}, need >= ${MIN_PROTOCOL_VERSION}`,
        );
      }
      return { response, target };
    }
    throw new KnatsError(ErrorCode.NoAgent, 'No agent available');
  }
}

function isNoResponders(err: unknown): boolean {
  return (err as { code?: string })?.code === '503' || /no responders/i.test(String((err as Error)?.message));
}

function isTimeout(err: unknown): boolean {
  return /timeout/i.test(String((err as Error)?.message));
}

/** The host part of host:port, brackets of an IPv6 literal removed. */
export function splitHost(address: string): string {
  if (address.startsWith('[')) {
    const end = address.indexOf(']');
    return end > 0 ? address.slice(1, end) : address;
  }
  const colon = address.lastIndexOf(':');
  return colon >= 0 ? address.slice(0, colon) : address;
}
