/**
 * A gRPC Proxy client whose receive loop behaves like the Go
 * konnectivity-client's (konnectivity-client/pkg/client/client.go, v0.36.0),
 * for the one behaviour that matters to the order of DIAL_RSP and DATA:
 *
 * - the receive loop hands a DIAL_RSP to the dialing side and reads the next
 *   packet at once (Go: a channel send the dialing goroutine receives; the
 *   receive goroutine goes straight back to Recv);
 * - the dialing side registers the connection (Go: `t.conns.add`) only when
 *   it gets to run; here after a macrotask hop (setImmediate), so every
 *   packet that arrived in the same read as the DIAL_RSP is handled first;
 * - DATA for a connectID that is not registered is dropped ("Connection not
 *   recognized") and answered with CLOSE_REQ; a CLOSE_RSP for one is
 *   ignored, so its connection would never end.
 *
 * Built on ProxyStreamClient's gRPC call (a client straight from the proto,
 * not the frontend's packet code); its own bookkeeping is not used.
 */
import { ProxyStreamClient, randomId, T } from './proxy-client.js';

export interface ModelDial {
  readonly connectID: number;
  readonly error: string;
  /** performance.now() when the receive loop read the DIAL_RSP. */
  readonly answeredAt: number;
}

export interface ModelConnection {
  readonly chunks: Buffer[];
  bytes: number;
  /** performance.now() of the first DATA handed to it, if any. */
  firstDataAt: number | undefined;
  closeError: string | undefined;
  onChange: (() => void) | undefined;
}

export class GoClientModel {
  readonly stream: ProxyStreamClient;
  private readonly pending = new Map<string, (dial: ModelDial) => void>();
  private readonly conns = new Map<number, ModelConnection>();
  /** DATA packets dropped as "Connection not recognized", by connectID. */
  readonly droppedData = new Map<number, number>();
  /** CLOSE_RSP packets for connectIDs not (yet) registered. */
  readonly droppedCloses = new Map<number, number>();

  constructor(target: string) {
    this.stream = new ProxyStreamClient(target);
    this.stream.call.on('data', (packet) => this.receive(packet));
  }

  /** The receive loop: one packet at a time, never waiting for the dialing side. */
  private receive(packet: import('./proxy-client.js').Packet): void {
    switch (packet.type) {
      case T.DIAL_RSP: {
        const answer = packet.dialResponse!;
        const handOver = this.pending.get(String(answer.random));
        this.pending.delete(String(answer.random));
        handOver?.({
          connectID: Number(answer.connectID),
          error: answer.error,
          answeredAt: performance.now(),
        });
        return;
      }
      case T.DATA: {
        const id = Number(packet.data!.connectID);
        const conn = this.conns.get(id);
        if (!conn) {
          this.droppedData.set(id, (this.droppedData.get(id) ?? 0) + 1);
          this.stream.closeRequest(id);
          return;
        }
        conn.firstDataAt ??= performance.now();
        conn.chunks.push(packet.data!.data);
        conn.bytes += packet.data!.data.length;
        conn.onChange?.();
        return;
      }
      case T.CLOSE_RSP: {
        const id = Number(packet.closeResponse!.connectID);
        const conn = this.conns.get(id);
        if (!conn) {
          this.droppedCloses.set(id, (this.droppedCloses.get(id) ?? 0) + 1);
          return;
        }
        conn.closeError = packet.closeResponse!.error;
        this.conns.delete(id);
        conn.onChange?.();
        return;
      }
    }
  }

  /**
   * DialContext: sends DIAL_REQ; once the receive loop handed the answer
   * over, registers the connection a macrotask later, as the dialing
   * goroutine does when it gets to run.
   */
  dial(address: string): Promise<ModelDial & { connection: ModelConnection | undefined }> {
    const random = randomId();
    return new Promise((resolve) => {
      this.pending.set(random, (dial) => {
        setImmediate(() => {
          if (dial.error) return resolve({ ...dial, connection: undefined });
          const connection: ModelConnection = {
            chunks: [],
            bytes: 0,
            firstDataAt: undefined,
            closeError: undefined,
            onChange: undefined,
          };
          this.conns.set(dial.connectID, connection);
          resolve({ ...dial, connection });
        });
      });
      this.stream.call.write({ type: T.DIAL_REQ, dialRequest: { protocol: 'tcp', address, random } });
    });
  }

  /** Resolves once `connection` holds `bytes` bytes or was closed; rejects after `timeoutMs`. */
  static waitFor(connection: ModelConnection, bytes: number, timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (connection.bytes >= bytes || connection.closeError !== undefined) {
          clearTimeout(timer);
          connection.onChange = undefined;
          resolve();
        }
      };
      const timer = setTimeout(() => {
        connection.onChange = undefined;
        reject(new Error(`only ${connection.bytes} of ${bytes} bytes after ${timeoutMs} ms`));
      }, timeoutMs);
      connection.onChange = check;
      check();
    });
  }

  registered(connectID: number): boolean {
    return this.conns.has(connectID);
  }

  close(): void {
    this.stream.close();
  }
}
