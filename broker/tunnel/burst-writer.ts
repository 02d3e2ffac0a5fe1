/**
 * Writes a burst of frames to a local socket in one go. nats.js hands every
 * message of one socket read to our subscription in one synchronous loop, so
 * a tunnel's frames come in bursts; writing each as it comes costs a write
 * call, a syscall and a callback per frame. Corked for the burst, the socket
 * sends it in one writev, and one callback reports all its bytes.
 */
import type { Writable } from 'node:stream';

export class BurstWriter {
  private readonly socket: Writable;
  private readonly written: (bytes: number) => void;
  /** The burst's last chunk, written at the flush with the burst's callback. */
  private last: Buffer | undefined;
  private bytes = 0;

  /** `written(bytes)` once a burst's bytes left Node's buffers (or the socket was gone). */
  constructor(socket: Writable, written: (bytes: number) => void) {
    this.socket = socket;
    this.written = written;
  }

  write(chunk: Buffer): void {
    if (this.last) {
      this.socket.write(this.last);
    } else {
      this.socket.cork();
      queueMicrotask(this.flush);
    }
    this.last = chunk;
    this.bytes += chunk.length;
  }

  /**
   * Writes the burst now; the caller must flush before it ends or destroys
   * the socket (a write after end() is an error). A later flush scheduled for
   * the same burst finds nothing to do.
   */
  readonly flush = (): void => {
    const last = this.last;
    if (!last) return;
    const bytes = this.bytes;
    this.last = undefined;
    this.bytes = 0;
    this.socket.write(last, () => this.written(bytes));
    this.socket.uncork();
  };
}
