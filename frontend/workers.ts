/**
 * `knats frontend --workers N`: a Node `cluster` primary and N frontend
 * workers, to use more than one core.
 *
 * - The workers share the front door's listeners: their `listen` calls go to
 *   the primary, which owns the Unix socket and the TCP port and hands each
 *   accepted connection to one worker (round robin). So only the primary
 *   prepares the socket path (the stale-socket probe), sets its mode and
 *   removes it; a worker never touches the file.
 * - Each worker is a whole frontend on the bus: its own NATS connection and
 *   its own id `<server-id>-w<k>` (frames, inbox, heartbeat), which a
 *   per-frontend NATS user is granted with `knats broker config --frontend ID
 *   --frontend-workers N`. A worker's tunnels live and die with it.
 * - The primary serves the one health and admin endpoint: /readyz is ready
 *   only when every worker is (a reason names each worker that is not),
 *   /metrics aggregates every worker's metrics and the primary's own.
 * - A worker that exits is logged (KNATS_WORKER_EXITED) and restarted with a
 *   backoff; the process is not ready meanwhile. A worker that fails before
 *   its first start ever completed stops the whole process (a configuration
 *   error would only fail again).
 * - SIGTERM drains every worker; the primary exits once they all have.
 *   A worker whose primary is gone stops at once.
 */
import cluster, { type Worker } from 'node:cluster';
import {
  AggregatorRegistry,
  Counter,
  collectDefaultMetrics,
  Gauge,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from 'prom-client';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { Logger } from '../broker/logging.js';
import { frontendWorkerId } from '../broker/nats-server/nats-auth.js';
import { startEndpoints } from '../broker/node/bus-node.js';
import { VERSION } from '../broker/version.js';
import { type FrontendConfig, type RunningFrontend, startFrontend } from './frontend.js';
import { ownSocketFile, prepareSocketPath, type UdsListener } from './unix-socket.js';

/** The environment variable that tells a forked worker its index (1-based). */
export const WORKER_INDEX_ENV = 'KNATS_FRONTEND_WORKER';

/** How often a worker tells the primary its readiness and state. */
const STATUS_INTERVAL_MS = 250;
/**
 * A worker silent this long is not ready: a worker whose event loop is stuck
 * (or that is stopped) still gets its share of new connections and serves
 * none of them, and its last report would say ready forever.
 */
const STATUS_STALE_MS = 3000;
/** A worker that does not answer a metrics request within this is left out of that scrape. */
const METRICS_TIMEOUT_MS = 2000;
/** Restart backoff: doubles per crash from the first, up to the last; reset by a worker that ran this long. */
const RESTART_BACKOFF_MS = { first: 250, max: 15_000, stableAfter: 30_000 };
/** After the graceful timeout, how long the primary waits for workers before killing them. */
const STOP_GRACE_MS = 5000;

type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

/** What a worker tells its primary. */
type WorkerMessage =
  | { knats: 'ready'; id: string; tcpPort?: number }
  | { knats: 'status'; notReady?: string; state: Record<string, unknown> }
  | { knats: 'metrics'; requestId: number; metrics: MetricsJson };

/** What the primary asks of a worker. */
type PrimaryMessage = { knats: 'stop' } | { knats: 'metrics?'; requestId: number };

function isMessage<T extends { knats: string }>(value: unknown): value is T {
  return (
    typeof value === 'object' && value !== null && typeof (value as { knats?: unknown }).knats === 'string'
  );
}

// ---- worker -----------------------------------------------------------------

/**
 * Runs worker `index` of `config.id`: a frontend on the shared listeners,
 * reporting to the primary over the cluster's IPC channel.
 */
export async function runFrontendWorker(config: FrontendConfig, index: number): Promise<void> {
  const logger = config.logger.child({ worker: index });
  const send = (message: WorkerMessage) => {
    if (process.connected) process.send?.(message);
  };
  let frontend: RunningFrontend | undefined;
  let stopping = false;
  let statusTimer: NodeJS.Timeout | undefined;
  const stop = (immediate: boolean) => {
    if (stopping) {
      // A second request (two signals, or the primary gone meanwhile): at once.
      if (immediate) process.exit(1);
      return;
    }
    stopping = true;
    clearInterval(statusTimer);
    const stopped = frontend ? frontend.stop({ immediate }) : Promise.resolve();
    stopped.then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('message', (message: unknown) => {
    if (!isMessage<PrimaryMessage>(message)) return;
    if (message.knats === 'stop') stop(false);
    else if (message.knats === 'metrics?') {
      const collected = frontend ? frontend.registry.getMetricsAsJSON() : Promise.resolve([]);
      collected.then(
        (metrics) =>
          send({ knats: 'metrics', requestId: message.requestId, metrics: metrics as MetricsJson }),
        () => send({ knats: 'metrics', requestId: message.requestId, metrics: [] }),
      );
    }
  });
  // The primary died: nobody accepts on the shared listeners any more, nobody would restart us.
  process.on('disconnect', () => {
    logger.warn('cluster primary gone; stopping now');
    stop(true);
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => stop(stopping));

  frontend = await startFrontend({
    ...config,
    id: frontendWorkerId(config.id, index),
    logger,
    clusterWorker: true,
  });
  const running = frontend;
  send({ knats: 'ready', id: running.id, tcpPort: running.tcpPort });
  const report = () =>
    send({ knats: 'status', notReady: running.notReadyReason(), state: running.debugState() });
  report();
  statusTimer = setInterval(report, STATUS_INTERVAL_MS);
}

// ---- primary ----------------------------------------------------------------

/** One worker slot: its index is fixed, its process changes across restarts. */
interface Slot {
  readonly index: number;
  worker?: Worker;
  /** Why it is not running, while it is not. */
  down: string;
  ready: boolean;
  everReady: boolean;
  notReady?: string;
  state?: Record<string, unknown>;
  /** When its last status report came. */
  reportedAt: number;
  startedAt: number;
  restarts: number;
  backoffMs: number;
  restartTimer?: NodeJS.Timeout;
}

export interface RunningWorkers {
  readonly healthPort: number;
  readonly adminPort: number;
  readonly tcpPort: number | undefined;
  stop(options?: { immediate?: boolean }): Promise<void>;
}

/**
 * Starts the cluster primary of `knats frontend --workers N`: prepares the
 * socket path, opens the health and admin ports, forks the workers (the same
 * command line; `WORKER_INDEX_ENV` tells each its index) and resolves once
 * every worker serves.
 */
export async function startFrontendWorkers(config: FrontendConfig, workers: number): Promise<RunningWorkers> {
  const logger = config.logger.child({ frontendId: config.id, worker: 'primary' });
  if (config.udsName) {
    await prepareSocketPath(config.udsName, logger);
    // The primary creates the socket when the first worker listens: never wider than --uds-mode.
    process.umask(0o777 & ~config.udsMode);
  }
  const slots: Slot[] = Array.from({ length: workers }, (_, i) => ({
    index: i + 1,
    down: 'starting',
    ready: false,
    everReady: false,
    reportedAt: 0,
    startedAt: 0,
    restarts: 0,
    backoffMs: RESTART_BACKOFF_MS.first,
  }));
  let stopping = false;
  let socketFile: UdsListener | undefined;
  let tcpPort: number | undefined;
  let failStart: (err: Error) => void = () => {};
  let allReady: () => void = () => {};
  const started = new Promise<void>((resolve, reject) => {
    allReady = resolve;
    failStart = reject;
  });

  /** Why a worker does not serve now, or undefined when it does. */
  const whyNotReady = (s: Slot): string | undefined => {
    if (!s.worker) return s.down;
    if (!s.ready) return 'starting';
    const silentMs = Date.now() - s.reportedAt;
    return silentMs > STATUS_STALE_MS ? `no report for ${silentMs} ms` : s.notReady;
  };

  const registry = new WorkersRegistry(slots, logger);
  new Gauge({
    name: 'knats_frontend_workers',
    help: 'Frontend workers configured (--workers)',
    registers: [registry.own],
  }).set(workers);
  new Gauge({
    name: 'knats_frontend_workers_ready',
    help: 'Frontend workers running and ready',
    registers: [registry.own],
    collect() {
      this.set(slots.filter((s) => !whyNotReady(s)).length);
    },
  });
  const restarts = new Counter({
    name: 'knats_frontend_worker_restarts_total',
    help: 'Frontend workers restarted after they exited',
    registers: [registry.own],
  });

  const notReadyReason = () => {
    if (stopping) return 'draining';
    const reasons = slots.flatMap((s) => {
      const why = whyNotReady(s);
      return why ? [`worker ${s.index}: ${why}`] : [];
    });
    return reasons.length ? reasons.join('; ') : undefined;
  };
  const debugState = () => ({
    id: config.id,
    role: 'frontend',
    workers: slots.map((s) => ({
      index: s.index,
      pid: s.worker?.process.pid,
      ready: !whyNotReady(s),
      restarts: s.restarts,
      ...(s.worker ? {} : { down: s.down }),
      state: s.state,
    })),
    tunnels: slots.reduce((n, s) => n + Number(s.state?.tunnels ?? 0), 0),
    draining: stopping,
  });
  const endpoints = await startEndpoints(config, {
    metrics: { registry },
    logger,
    notReadyReason,
    debugState,
    portFlags: { health: 'health-port', admin: 'admin-port' },
  });

  const fork = (slot: Slot) => {
    slot.restartTimer = undefined;
    slot.ready = false;
    slot.notReady = undefined;
    slot.state = undefined;
    slot.startedAt = Date.now();
    // The id is fixed here: a worker without --server-id would otherwise draw its own random one.
    const worker = cluster.fork({ KNATS_SERVER_ID: config.id, [WORKER_INDEX_ENV]: String(slot.index) });
    slot.worker = worker;
    worker.on('message', (message: unknown) => {
      if (!isMessage<WorkerMessage>(message)) return;
      if (message.knats === 'status') {
        slot.reportedAt = Date.now();
        slot.notReady = message.notReady;
        slot.state = message.state;
      } else if (message.knats === 'metrics') registry.answered(worker, message.requestId, message.metrics);
      else if (message.knats === 'ready') {
        slot.ready = true;
        slot.reportedAt = Date.now();
        slot.everReady = true;
        tcpPort ??= message.tcpPort;
        // The socket file exists once a worker listens (again, if every worker had exited and it was removed).
        if (config.udsName) socketFile = ownSocketFile(config.udsName, config.udsMode);
        logger.info(
          { index: slot.index, workerId: message.id, pid: worker.process.pid },
          'frontend worker ready',
        );
        if (slots.every((s) => s.ready)) allReady();
      }
    });
    worker.on('exit', (code, signal) => onExit(slot, worker, code, signal));
  };

  const onExit = (slot: Slot, worker: Worker, code: number | null, signal: string | null) => {
    if (slot.worker !== worker) return;
    slot.worker = undefined;
    slot.ready = false;
    registry.forget(worker);
    const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
    if (stopping) {
      slot.down = 'stopped';
      return;
    }
    if (!slot.everReady) {
      // It never served: a configuration or start-up error, which a restart would repeat.
      slot.down = how;
      logger.error(
        { code: ErrorCode.WorkerExited, index: slot.index, pid: worker.process.pid, exit: how },
        'frontend worker failed to start',
      );
      failStart(
        new KnatsError(
          code === 2 ? ErrorCode.BadConfig : ErrorCode.WorkerExited,
          `frontend worker ${slot.index} failed to start (${how}; its error is above)`,
        ),
      );
      return;
    }
    if (Date.now() - slot.startedAt >= RESTART_BACKOFF_MS.stableAfter)
      slot.backoffMs = RESTART_BACKOFF_MS.first;
    const delayMs = slot.backoffMs;
    slot.backoffMs = Math.min(slot.backoffMs * 2, RESTART_BACKOFF_MS.max);
    slot.down = `${how}, restarting`;
    slot.restarts++;
    restarts.inc();
    logger.error(
      {
        code: ErrorCode.WorkerExited,
        index: slot.index,
        pid: worker.process.pid,
        exit: how,
        restartInMs: delayMs,
      },
      'frontend worker exited; restarting it',
    );
    slot.restartTimer = setTimeout(() => fork(slot), delayMs);
  };

  const exited = () => slots.every((s) => !s.worker);
  const stop = async ({ immediate = false } = {}) => {
    if (stopping) return;
    stopping = true;
    logger.info({ immediate }, 'frontend stopping');
    for (const slot of slots) {
      clearTimeout(slot.restartTimer);
      if (immediate) slot.worker?.process.kill('SIGKILL');
      else if (slot.worker?.isConnected()) slot.worker.send({ knats: 'stop' } satisfies PrimaryMessage);
    }
    const deadline = Date.now() + (immediate ? 0 : config.gracefulShutdownTimeoutMs) + STOP_GRACE_MS;
    while (!exited() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const slot of slots) slot.worker?.process.kill('SIGKILL');
    while (!exited()) await new Promise((r) => setTimeout(r, 20));
    await endpoints.close();
    socketFile?.remove();
    logger.info('frontend stopped');
  };

  logger.info({ workers, pid: process.pid }, 'starting frontend workers');
  for (const slot of slots) fork(slot);
  try {
    await started;
  } catch (err) {
    await stop({ immediate: true });
    throw err;
  }
  logger.info(
    { uds: config.udsName, tcpPort, mode: config.mode, workers, version: VERSION },
    'all frontend workers ready',
  );
  return { healthPort: endpoints.healthPort, adminPort: endpoints.adminPort, tcpPort, stop };
}

/** Counters and histograms only go up: an exited worker's last values stay in the process's sums. */
function cumulative(metrics: MetricsJson): MetricsJson {
  return metrics.filter((m) => (m.type as unknown) === 'counter' || (m.type as unknown) === 'histogram');
}

/**
 * /metrics of the primary: every running worker's metrics and the primary's
 * own, aggregated as prom-client's AggregatorRegistry does for a cluster
 * (counters and histograms summed, per-process gauges as their metric says).
 * The requests are ours rather than AggregatorRegistry.clusterMetrics(), which
 * fails a whole scrape when one worker exits mid-request.
 *
 * The process's counters must never go down (Prometheus would take the drop
 * for a restart and count the whole remaining sum again in rate()): a worker
 * that exited keeps its last reported counters and histograms in the sums,
 * and one that is slow to answer counts with its last answer.
 */
class WorkersRegistry extends Registry {
  /** The primary's own metrics: its process and the worker counts. */
  readonly own = new Registry();
  private nextRequest = 0;
  private readonly pending = new Map<number, Map<Worker, (metrics: MetricsJson) => void>>();
  /** Each running worker's last answer. */
  private readonly lastAnswer = new Map<Worker, MetricsJson>();
  /** The counters and histograms of workers that exited, as they last reported them. */
  private retired: MetricsJson[] = [];

  constructor(
    private readonly slots: readonly Slot[],
    private readonly logger: Logger,
  ) {
    super();
    collectDefaultMetrics({ register: this.own });
  }

  override async metrics(): Promise<string> {
    const requestId = this.nextRequest++;
    const waiting = new Map<Worker, (metrics: MetricsJson) => void>();
    this.pending.set(requestId, waiting);
    const workers = this.slots.flatMap((s) => (s.worker?.isConnected() ? [s.worker] : []));
    const answers = workers.map(
      (worker) =>
        new Promise<MetricsJson>((resolve) => {
          const timer = setTimeout(() => {
            this.logger.warn(
              { pid: worker.process.pid },
              'frontend worker did not answer a metrics request in time',
            );
            resolve(this.lastAnswer.get(worker) ?? []);
          }, METRICS_TIMEOUT_MS);
          waiting.set(worker, (metrics) => {
            clearTimeout(timer);
            resolve(metrics);
          });
          worker.send({ knats: 'metrics?', requestId } satisfies PrimaryMessage);
        }),
    );
    try {
      const all = await Promise.all([...answers, this.own.getMetricsAsJSON() as Promise<MetricsJson>]);
      if (this.retired.length > 1) {
        // One entry however often workers were restarted.
        this.retired = [(await AggregatorRegistry.aggregate(this.retired).getMetricsAsJSON()) as MetricsJson];
      }
      return await AggregatorRegistry.aggregate([...all, ...this.retired]).metrics();
    } finally {
      this.pending.delete(requestId);
    }
  }

  answered(worker: Worker, requestId: number, metrics: MetricsJson): void {
    if (!worker.isDead()) this.lastAnswer.set(worker, metrics);
    this.pending.get(requestId)?.get(worker)?.(metrics);
  }

  /**
   * A worker that exited answers no more: its pending requests resolve
   * without it, and its last counters stay in the sums (as retired).
   */
  forget(worker: Worker): void {
    const last = this.lastAnswer.get(worker);
    this.lastAnswer.delete(worker);
    if (last) this.retired.push(cumulative(last));
    for (const waiting of this.pending.values()) waiting.get(worker)?.([]);
  }
}
