/**
 * Runs a long-lived component until a signal: the first SIGTERM/SIGINT stops
 * it gracefully, a second one exits at once.
 */
import type { Logger } from '../broker/logging.js';

export interface Stoppable {
  stop(options?: { immediate?: boolean }): Promise<void>;
}

export function stopOnSignals(component: Stoppable, logger: Logger): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'stopping gracefully (send again to exit at once)');
    component.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}
