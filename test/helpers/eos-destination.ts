/**
 * A loopback TCP destination whose behaviour is set per connection, for the
 * end-of-stream matrix and the randomized run: it can speak first, burst and
 * end or reset, trickle, never read, read slowly, half-close first, close at
 * once or reset before the dial is answered. It records what each
 * connection received and how it ended, so a test can check both ends.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { endedByReset, resetSocket } from '../../broker/tunnel/socket-reset.js';

export interface DestinationBehaviour {
  /** Bytes written as soon as the connection is accepted (before reading anything). */
  readonly banner: Buffer;
  /** Bytes written once `uploadBytes` arrived (or the client's FIN); '' when none. */
  readonly reply: 'none' | 'upload-sha';
  /** How the destination ends its side after its writes: FIN, a reset, or not at all (it waits). */
  readonly end: 'fin' | 'reset' | 'none';
  /** End right after the banner, before reading the upload (half-close first / burst then end). */
  readonly endEarly: boolean;
  /** Reset the connection the moment it is accepted (before the dial is answered). */
  readonly resetOnAccept: boolean;
  /** Destroy at once after accepting (FIN both ways, nothing read). */
  readonly closeOnAccept: boolean;
  /** Never read: the upload piles up in the kernel and then in the tunnel's window. */
  readonly neverReads: boolean;
  /** Pause reading this long after every chunk (a slow reader). */
  readonly readPauseMs: number;
  /** Write in chunks of this size with this pause in between (1 byte + pause = a trickle). */
  readonly writeChunk: number;
  readonly writePauseMs: number;
  /** The upload size the client sends; the reply goes out once it arrived. */
  readonly uploadBytes: number;
}

export interface DestinationRecord {
  received: number;
  readonly hash: ReturnType<typeof createHash>;
  /** How the destination saw the client's side end. */
  ended: 'open' | 'fin' | 'error';
  error: string | undefined;
  closed: boolean;
  /** The banner (and reply) were fully handed to the kernel. */
  wrote: boolean;
}

export class BehaviourDestination {
  readonly server: Server;
  readonly sockets = new Set<Socket>();
  readonly records: DestinationRecord[] = [];
  behaviour: DestinationBehaviour | undefined;
  port = 0;

  private constructor() {
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) =>
      this.accept(socket),
    );
  }

  static async start(): Promise<BehaviourDestination> {
    const destination = new BehaviourDestination();
    await new Promise<void>((resolve) => destination.server.listen(0, '127.0.0.1', resolve));
    destination.port = (destination.server.address() as { port: number }).port;
    return destination;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Destroys every open connection (a stuck destination at the end of its test). */
  destroyAll(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  /** Resets every open connection (a stuck destination giving up). */
  resetAll(): void {
    for (const socket of this.sockets) resetSocket(socket);
  }

  async close(): Promise<void> {
    this.destroyAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    const b = this.behaviour!;
    const record: DestinationRecord = {
      received: 0,
      hash: createHash('sha256'),
      ended: 'open',
      error: undefined,
      closed: false,
      wrote: false,
    };
    this.records.push(record);
    this.sockets.add(socket);
    socket.on('close', () => {
      record.closed = true;
      this.sockets.delete(socket);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      record.ended = 'error';
      record.error = err.code ?? err.message;
    });
    if (b.resetOnAccept) {
      socket.resetAndDestroy();
      return;
    }
    if (b.closeOnAccept) {
      socket.destroy();
      return;
    }
    let replied = false;
    let bannerDone = false;
    const finishWriting = () => {
      record.wrote = true;
      if (b.end === 'fin') socket.end();
      else if (b.end === 'reset') socket.resetAndDestroy();
    };
    const sendReply = () => {
      if (replied) return;
      replied = true;
      if (b.endEarly) return;
      const reply = b.reply === 'upload-sha' ? Buffer.from(record.hash.copy().digest('hex')) : undefined;
      if (reply) this.write(socket, reply, b, finishWriting);
      else finishWriting();
    };
    socket.on('data', (chunk: Buffer) => {
      record.received += chunk.length;
      record.hash.update(chunk);
      if (record.received >= b.uploadBytes && bannerDone) sendReply();
      if (b.readPauseMs > 0) {
        socket.pause();
        setTimeout(() => socket.resume(), b.readPauseMs);
      }
    });
    socket.on('end', () => {
      // Node reports a reset right behind data as an end (see socket-reset.ts); the kernel knows better.
      if (record.ended === 'open') {
        record.ended = !socket.writableEnded && endedByReset(socket) ? 'error' : 'fin';
      }
      if (bannerDone) sendReply();
    });
    this.write(socket, b.banner, b, () => {
      bannerDone = true;
      if (b.endEarly) finishWriting();
      else if (record.received >= b.uploadBytes || record.ended === 'fin') sendReply();
    });
    if (!b.neverReads) socket.resume();
  }

  /** Writes `bytes` in the behaviour's chunks and pauses, then calls `done`. */
  private write(socket: Socket, bytes: Buffer, b: DestinationBehaviour, done: () => void): void {
    if (b.writePauseMs === 0) {
      if (bytes.length === 0) done();
      else socket.write(bytes, (err) => err || done());
      return;
    }
    let offset = 0;
    const next = () => {
      if (socket.destroyed) return;
      if (offset >= bytes.length) {
        done();
        return;
      }
      const chunk = bytes.subarray(offset, offset + b.writeChunk);
      offset += chunk.length;
      socket.write(chunk, (err) => {
        if (!err) setTimeout(next, b.writePauseMs);
      });
    };
    next();
  }
}
