/**
 * Launcher of a local `nats-server` child process, for development (`knats
 * broker`, `knats demo`) and for tests against real servers on ephemeral ports.
 *
 * The child is started from a generated config file, is considered ready only
 * once it answers a TCP connect with its own `INFO {...}` line (checked by a
 * unique server_name, so a foreign server that happens to hold the port is
 * never mistaken for ours), and is killed when the parent process exits,
 * however it exits: a watchdog (watchdog.ts) kills it and removes its temp
 * folder even after a SIGKILL of the parent.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants as fsConstants, rmSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, KnatsError } from '../errors.js';
import { type Logger, silentLogger } from '../logging.js';
import { watchOnDeath } from './watchdog.js';

export interface LocalServerOptions {
  /** Client listen host; default '127.0.0.1'. */
  host?: string;
  /** Client port; default 0 = pick a free port (retried a few times if it is taken meanwhile). */
  port?: number;
  /** nats-server executable; default: findNatsServer(). */
  binary?: string;
  /** Where the generated config is written; default a fresh temp dir, removed on stop(). */
  stateDir?: string;
  /** Appended verbatim to the generated config (authorization blocks, ...). Do not set server_name here. */
  extraConfig?: string;
  /** Default 1 MiB. */
  maxPayload?: number;
  /** Default 256 MiB. */
  maxPending?: number;
  /** Optional cluster block; routes as nats-route://127.0.0.1:PORT. */
  cluster?: { name: string; port: number; routes: string[] };
  logger?: Logger;
  /**
   * Keep the Node.js event loop alive while the server runs (like a plain
   * spawn). Default false: the child and its pipes are unref'd, so a forgotten
   * server never keeps a test process hanging; it is still killed on exit.
   */
  keepAlive?: boolean;
}

export interface LocalServer {
  /** nats://host:port */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly pid: number;
  readonly configPath: string;
  /** SIGTERM, then SIGKILL after 5 s; removes the temp dir if we created it. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL, for fault tests. stop() may still be called afterwards to clean up. */
  kill(): void;
  /**
   * Resolves with the exit code (null when killed by a signal) once the child
   * has exited. Unless keepAlive is set, awaiting it alone does not keep Node
   * alive; after kill() or stop() it does.
   */
  readonly exited: Promise<number | null>;
}

const DEFAULT_HOST = '127.0.0.1';
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
const DEFAULT_MAX_PENDING = 256 * 1024 * 1024;
const READY_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000;
const PROBE_INTERVAL_MS = 50;
const PROBE_TIMEOUT_MS = 1_000;
const STDERR_TAIL_LINES = 30;
const PORT_ATTEMPTS = 5;
const INSTALL_HINT = 'install it with: apt-get install nats-server, or set NATS_SERVER_BIN';

// ---------------------------------------------------------------------------
// Children die with the parent: at once on a normal or process.exit() exit
// (below), and through each child's watchdog when the parent is killed.

/** Live children, each with the temp dir we created for it (removed on exit too). */
const liveChildren = new Map<ChildProcess, string | undefined>();
let exitHookInstalled = false;

function killAllChildren(): void {
  for (const [child, tempDir] of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
    try {
      if (tempDir !== undefined) rmSync(tempDir, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
  liveChildren.clear();
}

function track(child: ChildProcess, tempDir: string | undefined): void {
  liveChildren.set(child, tempDir);
  if (!exitHookInstalled) {
    process.on('exit', killAllChildren);
    exitHookInstalled = true;
  }
}

function untrack(child: ChildProcess): void {
  liveChildren.delete(child);
  if (liveChildren.size === 0 && exitHookInstalled) {
    process.removeListener('exit', killAllChildren);
    exitHookInstalled = false;
  }
}

// ---------------------------------------------------------------------------
// Finding the binary.

function isExecutableFile(file: string): boolean {
  try {
    if (!statSync(file).isFile()) return false;
    accessSync(file, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * NATS_SERVER_BIN first (when set it must point to an executable: an explicit
 * choice is never silently replaced by another binary), then each directory
 * of PATH, then /usr/sbin and /usr/local/bin.
 */
export function findNatsServer(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env.NATS_SERVER_BIN;
  if (explicit !== undefined && explicit !== '') {
    if (isExecutableFile(explicit)) return explicit;
    throw new KnatsError(
      ErrorCode.NatsServer,
      `NATS_SERVER_BIN=${explicit} is not an executable file: ${INSTALL_HINT}`,
    );
  }
  const dirs = (env.PATH ?? '').split(path.delimiter).filter((d) => d !== '');
  for (const dir of [...dirs, '/usr/sbin', '/usr/local/bin']) {
    const candidate = path.join(dir, 'nats-server');
    if (isExecutableFile(candidate)) return candidate;
  }
  throw new KnatsError(ErrorCode.NatsServer, `nats-server not found: ${INSTALL_HINT}`);
}

// ---------------------------------------------------------------------------
// Helpers.

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Picks `count` distinct free ports by holding `count` listeners at once, then closing them. */
async function freePorts(host: string, count: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host, port: 0, exclusive: true }, () => resolve());
      });
      const address = server.address();
      if (address === null || typeof address === 'string') {
        throw new KnatsError(ErrorCode.NatsServer, `could not pick a free port on ${host}`);
      }
      ports.push(address.port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

/** A free TCP port on `host` (held briefly, then released for a child process to take). */
export async function freePort(host = DEFAULT_HOST): Promise<number> {
  const [port] = await freePorts(host, 1);
  return port!;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface ServerInfo {
  server_name?: string;
  port?: number;
  connect_urls?: string[];
}

/** Connects to host:port and reads the server's first `INFO {...}` line; undefined on any failure. */
function probeInfo(
  host: string,
  port: number,
  timeoutMs = PROBE_TIMEOUT_MS,
): Promise<ServerInfo | undefined> {
  return new Promise((resolve) => {
    let buffered = '';
    let settled = false;
    const socket = net.connect({ host, port });
    const finish = (info: ServerInfo | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(info);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      const eol = buffered.indexOf('\n');
      if (eol < 0) {
        if (buffered.length > 64 * 1024) finish(undefined);
        return;
      }
      const line = buffered.slice(0, eol).trim();
      if (!line.startsWith('INFO {')) return finish(undefined);
      try {
        finish(JSON.parse(line.slice('INFO '.length)) as ServerInfo);
      } catch {
        finish(undefined);
      }
    });
    socket.on('error', () => finish(undefined));
    socket.on('close', () => finish(undefined));
  });
}

function generateConfig(serverName: string, host: string, port: number, options: LocalServerOptions): string {
  const lines = [
    '# generated by konnectivity-nats broker/local-server.ts',
    `server_name: ${JSON.stringify(serverName)}`,
    `listen: ${JSON.stringify(hostPort(host, port))}`,
    `max_payload: ${options.maxPayload ?? DEFAULT_MAX_PAYLOAD}`,
    `max_pending: ${options.maxPending ?? DEFAULT_MAX_PENDING}`,
    'write_deadline: "10s"',
  ];
  if (options.cluster) {
    const { name, port: clusterPort, routes } = options.cluster;
    lines.push(
      'cluster {',
      `  name: ${JSON.stringify(name)}`,
      `  listen: ${JSON.stringify(hostPort(host, clusterPort))}`,
      '  routes: [',
      ...routes.map((r) => `    ${JSON.stringify(r)}`),
      '  ]',
      '}',
    );
  }
  if (options.extraConfig) lines.push('', options.extraConfig);
  return `${lines.join('\n')}\n`;
}

/** unref'd: the child and its pipes do not keep the event loop alive; ref'd: they do. */
function setChildRef(child: ChildProcess, ref: boolean): void {
  if (ref) child.ref();
  else child.unref();
  for (const stream of [child.stdin, child.stdout, child.stderr]) {
    const socket = stream as unknown as Partial<net.Socket> | null;
    if (ref) socket?.ref?.();
    else socket?.unref?.();
  }
}

// ---------------------------------------------------------------------------
// Starting one server.

class AddressInUse extends KnatsError {}

async function startOnce(
  binary: string,
  host: string,
  port: number,
  configDir: string,
  options: LocalServerOptions,
  logger: Logger,
  cleanupDir: string | undefined,
): Promise<LocalServer> {
  const serverName = `knats-local-${randomBytes(6).toString('hex')}`;
  const configPath = path.join(configDir, `${serverName}.conf`);
  await writeFile(configPath, generateConfig(serverName, host, port, options), { mode: 0o600 });
  const log = logger.child({ natsServer: hostPort(host, port) });

  const stderrTail: string[] = [];
  const child = spawn(binary, ['-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  track(child, cleanupDir);
  const watchdog =
    child.pid === undefined ? undefined : watchOnDeath([child.pid], cleanupDir ? [cleanupDir] : []);

  let exitedFlag = false;
  let spawnError: Error | undefined;
  const exited = new Promise<number | null>((resolve) => {
    child.once('error', (err) => {
      // spawn failure (ENOENT, EACCES): no 'close' may follow
      spawnError = err;
      exitedFlag = true;
      untrack(child);
      resolve(null);
    });
    child.once('close', (code) => {
      exitedFlag = true;
      untrack(child);
      resolve(code);
    });
  });

  const lineSplitter = (onLine: (line: string) => void) => {
    let partial = '';
    return (chunk: string) => {
      partial += chunk;
      let eol = partial.indexOf('\n');
      while (eol >= 0) {
        const line = partial.slice(0, eol).trimEnd();
        partial = partial.slice(eol + 1);
        if (line !== '') onLine(line);
        eol = partial.indexOf('\n');
      }
    };
  };
  child.stderr!.setEncoding('utf8');
  child.stderr!.on(
    'data',
    lineSplitter((line) => {
      stderrTail.push(line);
      if (stderrTail.length > STDERR_TAIL_LINES) stderrTail.shift();
      log.debug({ stderr: line }, 'nats-server');
    }),
  );
  child.stdout!.setEncoding('utf8');
  child.stdout!.on(
    'data',
    lineSplitter((line) => log.debug({ stdout: line }, 'nats-server')),
  );

  const tail = () => (stderrTail.length > 0 ? `\n${stderrTail.join('\n')}` : '');

  let stopping: Promise<void> | undefined;
  const removeStateDir = async () => {
    if (cleanupDir !== undefined) await rm(cleanupDir, { recursive: true, force: true });
  };
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (!exitedFlag) {
        setChildRef(child, true); // whoever awaits stop() gets to see the exit
        child.kill('SIGTERM');
        let timer: NodeJS.Timeout | undefined;
        const graceful = await Promise.race([
          exited.then(() => true),
          new Promise<boolean>((resolve) => {
            timer = setTimeout(() => resolve(false), STOP_GRACE_MS);
          }),
        ]);
        clearTimeout(timer);
        if (!graceful) {
          log.warn('nats-server did not exit on SIGTERM within 5 s; sending SIGKILL');
          child.kill('SIGKILL');
          await exited;
        }
      }
      await removeStateDir();
      watchdog?.release();
      log.debug('nats-server stopped');
    })();
    return stopping;
  };

  // Wait until it accepts clients.
  const deadline = Date.now() + READY_TIMEOUT_MS;
  const checkName = !/\bserver_name\b/.test(options.extraConfig ?? '');
  for (;;) {
    if (exitedFlag) {
      await stop();
      const text = spawnError
        ? `nats-server could not be started (${binary}): ${spawnError.message}`
        : `nats-server exited before accepting clients on ${hostPort(host, port)}${tail()}`;
      const ErrorClass = /address already in use/i.test(tail()) ? AddressInUse : KnatsError;
      throw new ErrorClass(ErrorCode.NatsServer, text, { cause: spawnError });
    }
    const info = await probeInfo(host, port);
    if (info && (!checkName || info.server_name === serverName) && !exitedFlag) break;
    if (Date.now() >= deadline) {
      await stop();
      throw new KnatsError(
        ErrorCode.NatsServer,
        `nats-server did not accept clients on ${hostPort(host, port)} within ${READY_TIMEOUT_MS / 1000} s${tail()}`,
      );
    }
    await sleep(PROBE_INTERVAL_MS);
  }

  exited.then((code) => {
    if (!stopping) log.warn({ code, signal: child.signalCode }, 'nats-server exited unexpectedly');
  });
  if (!options.keepAlive) setChildRef(child, false);

  const url = `nats://${hostPort(host, port)}`;
  log.debug({ url, pid: child.pid, configPath }, 'nats-server ready');
  return {
    url,
    host,
    port,
    pid: child.pid!,
    configPath,
    stop,
    kill: () => {
      if (exitedFlag) return;
      setChildRef(child, true); // so that awaiting `exited` sees the exit
      child.kill('SIGKILL');
    },
    exited,
  };
}

/** Starts one nats-server and resolves once it accepts clients. */
export async function startLocalServer(options: LocalServerOptions = {}): Promise<LocalServer> {
  const host = options.host ?? DEFAULT_HOST;
  const binary = options.binary ?? findNatsServer();
  const logger = options.logger ?? silentLogger();
  const pickPort = options.port === undefined || options.port === 0;

  let configDir: string;
  let cleanupDir: string | undefined;
  if (options.stateDir !== undefined) {
    configDir = options.stateDir;
    await mkdir(configDir, { recursive: true });
  } else {
    configDir = await mkdtemp(path.join(os.tmpdir(), 'knats-nats-'));
    cleanupDir = configDir;
  }

  try {
    for (let attempt = 1; ; attempt++) {
      const port = pickPort ? await freePort(host) : options.port!;
      try {
        return await startOnce(binary, host, port, configDir, options, logger, cleanupDir);
      } catch (err) {
        if (!(err instanceof AddressInUse) || !pickPort || attempt >= PORT_ATTEMPTS) throw err;
        logger.debug({ port, attempt }, 'port taken meanwhile; retrying nats-server on another port');
        if (cleanupDir !== undefined) await mkdir(cleanupDir, { recursive: true });
      }
    }
  } catch (err) {
    if (cleanupDir !== undefined) await rm(cleanupDir, { recursive: true, force: true });
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Clusters.

/**
 * Resolves 'routed' once the server's client INFO lists the client ports of all
 * `ports` (i.e. its routes are up); 'exited' if it died meanwhile (for example
 * its route port was taken after its client port was ready); 'timeout'.
 */
async function waitForRoutes(
  server: LocalServer,
  ports: number[],
  deadline: number,
): Promise<'routed' | 'exited' | 'timeout'> {
  let gone = false;
  void server.exited.then(() => {
    gone = true;
  });
  for (;;) {
    if (gone) return 'exited';
    const info = await probeInfo(server.host, server.port);
    const seen = new Set(
      (info?.connect_urls ?? []).map((u) => Number.parseInt(u.slice(u.lastIndexOf(':') + 1), 10)),
    );
    if (ports.every((p) => seen.has(p)) && !gone) return 'routed';
    if (Date.now() >= deadline) return 'timeout';
    await sleep(PROBE_INTERVAL_MS);
  }
}

/**
 * Starts `size` servers joined by routes (full mesh) and resolves once all of
 * them accept clients and every server sees all the others.
 */
export async function startLocalCluster(
  size: number,
  options: Omit<LocalServerOptions, 'cluster' | 'port'> = {},
): Promise<LocalServer[]> {
  if (!Number.isInteger(size) || size < 1) {
    throw new KnatsError(ErrorCode.NatsServer, `cluster size must be a positive integer, got ${size}`);
  }
  const host = options.host ?? DEFAULT_HOST;
  const binary = options.binary ?? findNatsServer();
  const logger = options.logger ?? silentLogger();
  const name = `knats-local-${randomBytes(4).toString('hex')}`;

  for (let attempt = 1; ; attempt++) {
    const routePorts = await freePorts(host, size);
    const started = await Promise.allSettled(
      routePorts.map((clusterPort) =>
        startLocalServer({
          ...options,
          binary,
          logger,
          cluster: {
            name,
            port: clusterPort,
            routes: routePorts
              .filter((p) => p !== clusterPort)
              .map((p) => `nats-route://${hostPort(host, p)}`),
          },
        }),
      ),
    );
    const servers = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failure = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) {
      await Promise.all(servers.map((s) => s.stop()));
      const reason: unknown = failure.reason;
      const retry = reason instanceof AddressInUse && attempt < PORT_ATTEMPTS;
      if (retry) {
        logger.debug({ attempt }, 'cluster port taken meanwhile; retrying the cluster');
        continue;
      }
      throw reason;
    }

    const clientPorts = servers.map((s) => s.port);
    const deadline = Date.now() + READY_TIMEOUT_MS;
    const outcomes = await Promise.all(servers.map((s) => waitForRoutes(s, clientPorts, deadline)));
    if (outcomes.every((o) => o === 'routed')) return servers;
    await Promise.all(servers.map((s) => s.stop()));
    if (outcomes.includes('exited') && attempt < PORT_ATTEMPTS) {
      logger.debug({ attempt }, 'a cluster member exited while forming routes; retrying the cluster');
      continue;
    }
    throw new KnatsError(
      ErrorCode.NatsServer,
      `nats-server cluster of ${size} did not form routes within ${READY_TIMEOUT_MS / 1000} s`,
    );
  }
}
