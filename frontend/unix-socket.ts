/**
 * Unix socket hygiene for the front door on --uds-name: a stale socket
 * cleared (never a live one or a non-socket), the socket bound under a
 * restrictive umask and set to --uds-mode, only our own file removed at stop.
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { dirname } from 'node:path';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import type { Logger } from '../broker/logging.js';
import type { FrontendConfig } from './frontend.js';
import type { ServingDoor } from './serving-doors.js';

export interface UdsListener {
  /** Removes the socket file, unless another process has replaced it meanwhile. */
  remove(): void;
}

/**
 * Binds the door on --uds-name (prepareSocketPath cleared the way), the
 * socket is created with no more than --uds-mode (umask during bind) and then
 * set to exactly that mode, and only our own socket file is removed at stop.
 */
export async function listenUds(
  door: ServingDoor,
  config: FrontendConfig,
  logger: Logger,
): Promise<UdsListener> {
  const path = config.udsName!;
  if (config.clusterWorker) {
    await door.listenUds(path);
    return { remove() {} };
  }
  await withUmask(0o777 & ~config.udsMode, () => door.listenUds(path));
  const listener = ownSocketFile(path, config.udsMode);
  logger.info({ uds: path, mode: config.udsMode.toString(8), door: config.mode }, 'listening on unix socket');
  return listener;
}

/** Sets the bound socket file's mode; `remove` deletes that file only, not a successor at the same path. */
export function ownSocketFile(path: string, mode: number): UdsListener {
  chmodSync(path, mode);
  const inode = lstatSync(path).ino;
  return {
    remove() {
      try {
        const stat = lstatSync(path);
        if (stat.isSocket() && stat.ino === inode) unlinkSync(path);
      } catch {
        // gone already
      }
    },
  };
}

/** sun_path holds 108 bytes on Linux (104 on macOS), one of them the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 107 : 103;

/**
 * Makes `path` free for a new socket. A non-socket file is never deleted, and
 * neither is a socket something still answers on (another frontend would lose
 * its clients while still reporting ready): the start fails, naming what
 * answered. A dead socket (left by a crash) is always replaced, whatever
 * --delete-existing-uds-file says (accepted for upstream compatibility).
 */
export async function prepareSocketPath(path: string, logger: Logger): Promise<void> {
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--uds-name ${path}: ${bytes} bytes, over the ${MAX_SOCKET_PATH_BYTES}-byte limit of a Unix socket path; use a shorter path`,
    );
  }
  let stat: ReturnType<typeof lstatSync>;
  try {
    stat = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      try {
        lstatSync(dirname(path));
      } catch {
        throw new KnatsError(
          ErrorCode.BadConfig,
          `--uds-name ${path}: directory ${dirname(path)} does not exist`,
        );
      }
      return;
    }
    throw new KnatsError(ErrorCode.BadConfig, `--uds-name ${path}: ${(err as Error).message}`);
  }
  if (!stat.isSocket()) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--uds-name ${path} exists and is not a socket; refusing to delete it`,
    );
  }
  const state = await probeSocket(path);
  if (state !== 'stale') {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `--uds-name ${path}: another process listens on it (${state}); refusing to take over a live socket (stop that process or choose another path)`,
    );
  }
  unlinkSync(path);
  logger.info({ uds: path }, 'removed a stale socket file');
}

/**
 * Whether a process still accepts connections on a socket file, and if so
 * what it seems to be: an HTTP/2 server (a gRPC frontend) sends its SETTINGS
 * frame at once, an HTTP/1.1 server (a CONNECT frontend) answers a request
 * line. A socket that accepts is live even if it says nothing.
 */
function probeSocket(path: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = netConnect({ path });
    let received = Buffer.alloc(0);
    let connected = false;
    const done = (state: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(state);
    };
    const describe = () => {
      // An HTTP/2 frame header: 3 bytes length, type 4 (SETTINGS) or 7 (GOAWAY).
      if (received.length >= 4 && (received[3] === 4 || received[3] === 7))
        return 'an HTTP/2 server (a gRPC frontend?)';
      if (received.subarray(0, 5).toString('latin1') === 'HTTP/')
        return 'an HTTP/1.1 server (an HTTP CONNECT frontend?)';
      return 'a process that accepts connections';
    };
    const timer = setTimeout(() => done(connected ? describe() : 'a process (connect did not finish)'), 500);
    socket.once('connect', () => {
      connected = true;
      socket.write('OPTIONS * HTTP/1.1\r\nHost: probe\r\n\r\n');
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 5) done(describe());
    });
    socket.once('close', () => {
      if (connected) done(describe());
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (connected) done(describe());
      else if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') done('stale');
      else done(`a process (connect failed: ${err.code})`);
    });
  });
}

/** Runs `bind` with a restrictive umask so the socket is never created wider than wanted. */
async function withUmask<T>(mask: number, bind: () => Promise<T>): Promise<T> {
  let previous: number | undefined;
  try {
    previous = process.umask(mask);
  } catch {
    // worker threads cannot change the umask: chmod afterwards still applies
  }
  try {
    return await bind();
  } finally {
    if (previous !== undefined) process.umask(previous);
  }
}
