/**
 * Work driven by peers runs inside NATS subscription callbacks and timers,
 * where nobody catches: a throw in a nats.js callback kills the connection's
 * reader loop (the process goes deaf) and a throw in a timer exits the
 * process. Such work runs through `guarded`, so a throw costs the one message
 * or the one tunnel that caused it, with one log line that has a stable code.
 */
import { ErrorCode, isKnatsError, KnatsError } from './errors.js';
import type { Logger } from './logging.js';

/** The error as a KnatsError; anything else thrown while handling peer input is that input's fault. */
export function asPeerError(err: unknown): KnatsError {
  return isKnatsError(err)
    ? err
    : new KnatsError(ErrorCode.BadPeerMessage, String((err as Error)?.message ?? err));
}

/** Runs `work`; a throw is logged once (code, reason, no stack) and handed to `onError`. */
export function guarded(
  logger: Logger,
  what: string,
  work: () => void,
  onError?: (err: KnatsError) => void,
): void {
  try {
    work();
  } catch (err) {
    const error = asPeerError(err);
    logger.error({ code: error.code, reason: error.message }, `${what} failed`);
    try {
      onError?.(error);
    } catch (again) {
      logger.error({ code: asPeerError(again).code, reason: String(again) }, `${what}: cleanup failed`);
    }
  }
}
