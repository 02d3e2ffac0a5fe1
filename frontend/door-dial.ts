/**
 * What every front door (gRPC, HTTP CONNECT) does around a dial, in one
 * place: the pending-dial gauge, dial duration, dial failures by reason,
 * established connections and connection duration, and the "dial failed" /
 * "tunnel open" log lines. The doors only translate their protocol.
 */
import { ErrorCode, isKnatsError, KnatsError } from '../broker/errors.js';
import type { DialTimeline } from '../broker/telemetry/dial-stages.js';
import type { Tunnel } from '../broker/tunnel/tunnel.js';
import type { BusDialer, DialLog, DialOutcome } from './bus-dialer.js';
import type { Door, FrontendMetrics } from './metrics.js';

export interface DoorDialContext {
  readonly dialer: BusDialer;
  readonly metrics: FrontendMetrics;
  /** False while the frontend drains: new dials are refused. */
  readonly accepting: () => boolean;
}

export function asKnatsError(err: unknown): KnatsError {
  return isKnatsError(err)
    ? err
    : new KnatsError(ErrorCode.DialFailed, String((err as Error)?.message ?? err));
}

/**
 * Dials through the bus for a client. Resolves with an open tunnel, or
 * rejects with a KnatsError that is already counted in
 * dial_failure_count{reason} and logged. If `signal` aborted meanwhile, a
 * tunnel the agent did open is closed and the dial fails with DialCancelled
 * (reason frontend_close). `timeline` started when the door got the request.
 */
export async function dialForClient(
  context: DoorDialContext,
  address: string,
  log: DialLog,
  timeline: DialTimeline,
  signal?: AbortSignal,
): Promise<DialOutcome> {
  timeline.mark('door_parse');
  const { dialer, metrics } = context;
  metrics.pendingDials.inc();
  const started = process.hrtime.bigint();
  try {
    if (!context.accepting()) throw new KnatsError(ErrorCode.ShuttingDown, 'frontend is draining');
    const outcome = await dialer.dial(address, 'tcp', log, timeline, signal);
    // The destination aborted before the client was answered (a reset right after accepting): a failed dial.
    const aborted = outcome.tunnel.abortedWith;
    if (aborted) throw aborted;
    if (signal?.aborted) {
      outcome.tunnel.close(
        new KnatsError(ErrorCode.DialCancelled, 'client went away before the dial completed'),
      );
      throw new KnatsError(ErrorCode.DialCancelled, 'client went away before the dial completed');
    }
    metrics.dialDuration.observe(Number(process.hrtime.bigint() - started) / 1e9);
    return outcome;
  } catch (err) {
    const error = asKnatsError(err);
    countDialFailure(context, error);
    log.logger.info({ ...log.fields, address, code: error.code, reason: error.message }, 'dial failed');
    throw error;
  } finally {
    metrics.pendingDials.dec();
  }
}

/** A dial refused by the door itself (bad request, draining, limits): counted like an agent's answer. */
export function countDialFailure(context: Pick<DoorDialContext, 'metrics'>, err: KnatsError): void {
  context.metrics.countDialFailure(err.code);
}

/** The client was told the dial succeeded: the tunnel is established, the dial's stages are counted. */
export function tunnelEstablished(
  context: Pick<DoorDialContext, 'metrics'>,
  door: Door,
  outcome: DialOutcome,
  timeline: DialTimeline,
  fields: Record<string, unknown> = {},
): void {
  timeline.mark('answer_write');
  context.metrics.observeDialStages(door, timeline);
  context.metrics.established.inc();
  outcome.tunnel.logger.info(
    { agentId: outcome.agentId, strategy: outcome.strategy, ...fields },
    'tunnel open',
  );
}

/** An established tunnel ended (its door calls this from TunnelLocalSide.finish). */
export function tunnelFinished(context: Pick<DoorDialContext, 'metrics'>, tunnel: Tunnel): void {
  context.metrics.established.dec();
  context.metrics.connectionDuration.observe((Date.now() - tunnel.openedAt) / 1000);
}
