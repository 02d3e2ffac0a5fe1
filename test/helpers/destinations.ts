/**
 * Real TCP destinations on loopback for tests.
 */
import { createHash } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';

export interface Destination {
  readonly port: number;
  readonly address: string;
  readonly sockets: Set<Socket>;
  /** Sockets accepted so far. */
  accepted: number;
  close(): Promise<void>;
}

async function listen(server: Server, sockets: Set<Socket>, onAccept: () => void): Promise<Destination> {
  server.on('connection', (s) => {
    // Peers die in fault tests: a reset is expected, not a test failure.
    s.on('error', () => {});
    sockets.add(s);
    onAccept();
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const dest: Destination = {
    port,
    address: `127.0.0.1:${port}`,
    sockets,
    accepted: 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  return dest;
}

async function tcpDestination(handler: (s: Socket) => void): Promise<Destination> {
  const sockets = new Set<Socket>();
  const server = createServer({ noDelay: true }, handler);
  let dest: Destination | undefined;
  dest = await listen(server, sockets, () => {
    if (dest) dest.accepted++;
  });
  return dest;
}

/** Echoes every byte back. */
export function echoServer(): Promise<Destination> {
  return tcpDestination((s) => s.pipe(s));
}

/** Speaks first: writes `banner` as soon as it accepts (as SSH, SMTP, MySQL do), then echoes. */
export function bannerServer(banner: Buffer): Promise<Destination> {
  return tcpDestination((s) => {
    s.write(banner);
    s.pipe(s);
  });
}

/** Accepts and closes at once (a FIN, no bytes). */
export function closingServer(): Promise<Destination> {
  return tcpDestination((s) => s.end());
}

/**
 * Reads `uploadBytes`, answers with their sha256 (32 bytes), then sends
 * `download` (deterministic pseudo-random bytes), then closes.
 */
export function shaServer(uploadBytes: number, download: Buffer): Promise<Destination> {
  return tcpDestination((s) => {
    const hash = createHash('sha256');
    let got = 0;
    s.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      got += chunk.length;
      if (got === uploadBytes) {
        s.write(hash.digest());
        s.end(download);
      }
    });
    if (uploadBytes === 0) {
      s.write(hash.digest());
      s.end(download);
    }
  });
}

/** Accepts connections and never reads from them (a stuck destination). */
export function blackholeServer(): Promise<Destination> {
  return tcpDestination((s) => s.pause());
}

/** A small HTTP server answering `hello <path>`. */
export async function httpServer(tag = 'hello'): Promise<Destination> {
  const sockets = new Set<Socket>();
  const server = createHttpServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', connection: 'close' });
    res.end(`${tag} ${req.url}`);
  });
  let dest: Destination | undefined;
  dest = await listen(server as unknown as Server, sockets, () => {
    if (dest) dest.accepted++;
  });
  return dest;
}

/** A loopback port with nothing listening (connections are refused). */
export async function refusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export function randomBytesSeeded(n: number, seed = 1): Buffer {
  // xorshift: fast, deterministic, incompressible enough for transfer tests
  const buf = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeUInt32LE(x >>> 0, i);
  }
  for (; i < n; i++) buf[i] = i & 0xff;
  return buf;
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/**
 * A loopback port whose accept queue is full: further SYNs are dropped, so a
 * dial to it hangs until the dialer's timeout. Node always accepts, so the
 * listener is a tiny python3 process that never calls accept().
 */
export async function hangingPort(): Promise<{ port: number; close(): void }> {
  const { spawn } = await import('node:child_process');
  const child = spawn(
    'python3',
    [
      '-c',
      'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()',
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const port = await new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
  });
  // Fill the accept queue (backlog 0 still queues one or two on Linux).
  const fillers: Socket[] = [];
  const { connect } = await import('node:net');
  for (let i = 0; i < 4; i++) {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => {});
    fillers.push(s);
  }
  await new Promise((r) => setTimeout(r, 100));
  return {
    port,
    close() {
      for (const s of fillers) s.destroy();
      child.kill('SIGKILL');
    },
  };
}
