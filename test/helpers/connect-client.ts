/**
 * A raw HTTP CONNECT client for tests: real sockets (Unix or mTLS TCP),
 * byte-level control over what is sent (one write for header + payload,
 * garbage, slow dribbles) and over what came back.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';

export type DoorTarget =
  | { readonly path: string }
  | {
      readonly port: number;
      readonly ca: string;
      readonly cert?: string;
      readonly key?: string;
      readonly tls?: ConnectionOptions;
    };

export interface ResponseHead {
  readonly status: number;
  readonly statusLine: string;
  readonly headers: Record<string, string>;
}

export class DoorClient extends EventEmitter {
  readonly socket: Socket;
  private chunks: Buffer[] = [];
  private length = 0;
  ended = false;
  error: NodeJS.ErrnoException | undefined;

  private constructor(socket: Socket) {
    super();
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.length += chunk.length;
      this.emit('change');
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.error = err;
      this.emit('change');
    });
    socket.on('close', () => {
      this.ended = true;
      this.emit('change');
    });
  }

  /** Connects (and for TCP completes the mTLS handshake). */
  static open(target: DoorTarget): Promise<DoorClient> {
    return new Promise((resolve, reject) => {
      let socket: Socket;
      if ('path' in target) {
        socket = netConnect({ path: target.path });
        socket.once('connect', () => resolve(new DoorClient(socket)));
      } else {
        socket = tlsConnect({
          host: '127.0.0.1',
          port: target.port,
          ca: readFileSync(target.ca),
          ...(target.cert ? { cert: readFileSync(target.cert) } : {}),
          ...(target.key ? { key: readFileSync(target.key) } : {}),
          ...target.tls,
        });
        socket.once('secureConnect', () => resolve(new DoorClient(socket)));
      }
      socket.once('error', reject);
    });
  }

  get buffered(): number {
    return this.length;
  }

  write(bytes: Buffer | string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.write(bytes, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Writes `data` in chunks, respecting backpressure. */
  async writeAll(data: Buffer, chunk = 64 * 1024): Promise<void> {
    for (let off = 0; off < data.length; off += chunk) {
      if (!this.socket.write(data.subarray(off, off + chunk))) {
        await new Promise((r) => this.socket.once('drain', r));
      }
    }
  }

  private waitFor(done: () => boolean, what: string, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (done()) return resolve();
      const timer = setTimeout(() => {
        this.off('change', check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (have ${this.length} bytes)`));
      }, timeoutMs);
      const check = () => {
        if (done()) {
          clearTimeout(timer);
          this.off('change', check);
          resolve();
        } else if (this.ended) {
          clearTimeout(timer);
          this.off('change', check);
          reject(new Error(`connection closed while waiting for ${what} (have ${this.length} bytes)`));
        }
      };
      this.on('change', check);
    });
  }

  private peek(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /** Removes and returns the first `n` bytes received. */
  take(n: number): Buffer {
    const all = this.peek();
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.length = rest.length;
    return out;
  }

  /** Waits for a response header; consumes it; the bytes after it stay buffered. */
  async readHead(timeoutMs = 15_000): Promise<ResponseHead> {
    let end = -1;
    await this.waitFor(
      () => {
        end = this.peek().indexOf('\r\n\r\n');
        return end >= 0;
      },
      'a response header',
      timeoutMs,
    );
    const head = this.take(end + 4).toString('latin1');
    const [statusLine = '', ...lines] = head.slice(0, -4).split('\r\n');
    const headers: Record<string, string> = {};
    for (const line of lines) {
      const colon = line.indexOf(':');
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const status = Number(/^HTTP\/1\.[01] ([0-9]{3}) /.exec(statusLine)?.[1] ?? 0);
    return { status, statusLine, headers };
  }

  async readBytes(n: number, timeoutMs = 60_000): Promise<Buffer> {
    await this.waitFor(() => this.length >= n, `${n} bytes`, timeoutMs);
    return this.take(n);
  }

  /** Waits until the server closed the connection; returns what arrived meanwhile. */
  async readToEnd(timeoutMs = 15_000): Promise<Buffer> {
    await new Promise<void>((resolve, reject) => {
      if (this.ended) return resolve();
      const timer = setTimeout(
        () => reject(new Error(`connection still open after ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    return this.take(this.length);
  }

  close(): void {
    this.socket.destroy();
  }
}

export function connectRequest(address: string, extraHeaders = ''): string {
  return `CONNECT ${address} HTTP/1.1\r\nHost: ${address}\r\n${extraHeaders}\r\n`;
}

/** One CONNECT: returns the response head and, for errors, the body up to the close. */
export async function connectOnce(
  target: DoorTarget,
  request: string | Buffer,
): Promise<{ head: ResponseHead; body: string; client: DoorClient }> {
  const client = await DoorClient.open(target);
  await client.write(request);
  const head = await client.readHead();
  let body = '';
  if (head.status !== 200) body = (await client.readToEnd()).toString();
  return { head, body, client };
}
