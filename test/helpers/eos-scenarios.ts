/**
 * The end-of-stream scenarios shared by the destination-behaviour matrix and
 * the seeded randomized run: a rig of real processes' parts (nats-server,
 * a gRPC door on a Unix socket, CONNECT doors on a Unix socket and on mTLS
 * TCP, one agent), destinations with named behaviours, clients with named
 * behaviours, and one verdict per cell:
 *
 * - the client gets every byte and a clean end, or an error it can see
 *   (gRPC: DIAL_RSP or CLOSE_RSP with an error, a failed stream; CONNECT: a
 *   non-200 status or a reset), never a short body with a clean end;
 * - the destination gets the client's bytes exactly where it reads them all,
 *   and an abort of the client reaches it as an abort;
 * - the answer to the dial precedes every tunnel byte;
 * - afterwards no tunnel, connection, pending dial or socket is left.
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { RunningAgent } from '../../agent/agent.js';
import { endedByReset } from '../../broker/tunnel/socket-reset.js';
import type { RunningFrontend } from '../../frontend/frontend.js';
import { createPki, type Pki } from './certs.js';
import { randomBytesSeeded, refusedPort, sha256 } from './destinations.js';
import {
  BehaviourDestination,
  type DestinationBehaviour,
  type DestinationRecord,
} from './eos-destination.js';
import { eventually, Fleet } from './fleet.js';
import { ProxyStreamClient, T } from './proxy-client.js';

export const DOORS = ['grpc-uds', 'connect-uds', 'connect-tls'] as const;
export type DoorKind = (typeof DOORS)[number];

export const CLIENTS = ['fast', 'slow-reader', 'sends-fin', 'resets'] as const;
export type ClientKind = (typeof CLIENTS)[number];

export const DESTINATIONS = [
  'speaks-first',
  'burst-fin',
  'burst-reset',
  'reply-then-reset',
  'trickle',
  'never-reads',
  'reads-slowly',
  'half-closes-first',
  'accept-close',
  'close-before-answer',
  'refuses',
] as const;
export type DestinationKind = (typeof DESTINATIONS)[number];

/** The credit window of the rig: small, so every download waits for credit several times. */
export const RIG_WINDOW = 256 * 1024;

export interface Cell {
  readonly door: DoorKind;
  readonly client: ClientKind;
  readonly destination: DestinationKind;
  readonly uploadBytes: number;
  readonly downloadBytes: number;
  /** Seeds the payloads. */
  readonly seed: number;
  /** Client write size and pauses (the randomized run varies them). */
  readonly clientChunk: number;
  readonly clientPauseMs: number;
  /** Destination write size and pause for the trickle and the randomized run. */
  readonly destChunk: number;
  readonly destPauseMs: number;
}

/** What the client should see when it behaves: exact bytes, nothing, or an abort. */
type Expected = { bytes: Buffer } | 'error' | 'empty-or-error';

interface Plan {
  readonly behaviour: DestinationBehaviour | undefined;
  readonly expected: Expected;
  /** The destination reads the whole upload before it ends its own side. */
  readonly readsUploadBeforeEnd: boolean;
  /** It reads nothing: the test checks the window bound, then tears the destination down. */
  readonly stuck: boolean;
  /** Every byte the destination writes, when it writes them all. */
  readonly writes: Buffer;
}

function plan(cell: Cell, upload: Buffer, download: Buffer): Plan {
  const p = destinationPlan(cell, upload, download);
  const reply = p.behaviour?.reply === 'upload-sha' ? Buffer.from(sha256(upload)) : Buffer.alloc(0);
  return { ...p, writes: Buffer.concat([p.behaviour?.banner ?? Buffer.alloc(0), reply]) };
}

function destinationPlan(cell: Cell, upload: Buffer, download: Buffer): Omit<Plan, 'writes'> {
  const base: DestinationBehaviour = {
    banner: Buffer.alloc(0),
    reply: 'none',
    end: 'fin',
    endEarly: false,
    resetOnAccept: false,
    closeOnAccept: false,
    neverReads: false,
    readPauseMs: 0,
    writeChunk: cell.destChunk,
    writePauseMs: cell.destPauseMs,
    uploadBytes: upload.length,
  };
  const reads = { readsUploadBeforeEnd: true, stuck: false };
  switch (cell.destination) {
    case 'speaks-first':
      return { behaviour: { ...base, banner: download }, expected: { bytes: download }, ...reads };
    case 'burst-fin':
      return {
        behaviour: { ...base, banner: download, endEarly: true, writePauseMs: 0 },
        expected: { bytes: download },
        readsUploadBeforeEnd: false,
        stuck: false,
      };
    case 'burst-reset':
      return {
        behaviour: { ...base, banner: download, endEarly: true, end: 'reset', writePauseMs: 0 },
        expected: 'error',
        readsUploadBeforeEnd: false,
        stuck: false,
      };
    case 'reply-then-reset':
      // A small answer with the reset right behind it: Node itself reports such a reset as an end.
      return {
        behaviour: { ...base, reply: 'upload-sha', end: 'reset', writePauseMs: 0 },
        expected: 'error',
        ...reads,
      };
    case 'trickle': {
      const trickle = download.subarray(0, 200);
      return {
        behaviour: { ...base, banner: trickle, writeChunk: 1, writePauseMs: 1 },
        expected: { bytes: trickle },
        ...reads,
      };
    }
    case 'never-reads':
      return {
        behaviour: { ...base, banner: Buffer.from('hello\n'), neverReads: true, end: 'none' },
        expected: 'error',
        readsUploadBeforeEnd: false,
        stuck: true,
      };
    case 'reads-slowly':
      return {
        behaviour: { ...base, reply: 'upload-sha', readPauseMs: 2 },
        expected: { bytes: Buffer.from(sha256(upload)) },
        ...reads,
      };
    case 'half-closes-first':
      return {
        behaviour: { ...base, endEarly: true },
        expected: { bytes: Buffer.alloc(0) },
        readsUploadBeforeEnd: false,
        stuck: false,
      };
    case 'accept-close':
      return {
        behaviour: { ...base, closeOnAccept: true },
        expected: 'empty-or-error',
        readsUploadBeforeEnd: false,
        stuck: false,
      };
    case 'close-before-answer':
      return {
        behaviour: { ...base, resetOnAccept: true },
        expected: 'empty-or-error',
        readsUploadBeforeEnd: false,
        stuck: false,
      };
    case 'refuses':
      return { behaviour: undefined, expected: 'error', readsUploadBeforeEnd: false, stuck: false };
  }
}

/** What the client saw. */
export interface ClientOutcome {
  /** 'clean': every byte it got was followed by a clean end; 'error': an abort or refusal it could see. */
  end: 'clean' | 'error';
  detail: string;
  data: Buffer;
  /** The dial answer came before any tunnel byte. */
  orderOk: boolean;
  /** The dial was answered with success. */
  dialed: boolean;
}

export class EosRig {
  readonly fleet = new Fleet();
  pki!: Pki;
  grpc!: RunningFrontend & { uds: string };
  connectUds!: RunningFrontend & { uds: string };
  connectTls!: RunningFrontend;
  agent!: RunningAgent;
  destination!: BehaviourDestination;
  refused = 0;

  async start(): Promise<void> {
    await this.fleet.startNats();
    const window = ['--tunnel-window', String(RIG_WINDOW)];
    this.pki = createPki(`${this.fleet.dir}/pki`);
    this.agent = await this.fleet.agent(window);
    this.grpc = await this.fleet.frontend(['--mode', 'grpc', ...window]);
    this.connectUds = await this.fleet.frontend(['--mode', 'http-connect', ...window]);
    this.connectTls = await this.fleet.frontend([
      '--mode',
      'http-connect',
      '--server-port',
      String(await refusedPort()),
      '--server-cert',
      this.pki.server.cert,
      '--server-key',
      this.pki.server.key,
      '--server-ca-cert',
      this.pki.ca.cert,
      ...window,
    ]);
    this.destination = await BehaviourDestination.start();
    this.refused = await refusedPort();
    for (const frontend of [this.grpc, this.connectUds, this.connectTls]) {
      await eventually(() => (frontend.debugState() as { agents: number }).agents > 0, 'agent known');
    }
  }

  async stop(): Promise<void> {
    await this.destination?.close();
    await this.fleet.stop();
  }

  private frontendFor(door: DoorKind): RunningFrontend {
    if (door === 'grpc-uds') return this.grpc;
    return door === 'connect-uds' ? this.connectUds : this.connectTls;
  }

  /** Runs one cell; returns the problems found (empty: the cell holds). */
  async run(cell: Cell): Promise<string[]> {
    const upload = randomBytesSeeded(cell.uploadBytes, cell.seed);
    const download = randomBytesSeeded(cell.downloadBytes, cell.seed + 1);
    const p = plan(cell, upload, download);
    this.destination.behaviour = p.behaviour;
    const recordsBefore = this.destination.records.length;
    const address = p.behaviour ? this.destination.address : `127.0.0.1:${this.refused}`;
    const problems: string[] = [];
    const onAnswered = p.stuck ? () => this.checkStuckBound(cell.door, problems) : undefined;
    const client =
      cell.door === 'grpc-uds'
        ? runGrpcClient(this.grpc.uds, address, cell, upload, onAnswered)
        : runConnectClient(this.connectTarget(cell.door), address, cell, upload, onAnswered);
    const outcome = await withDeadline(client, 30_000, `client of ${describeCell(cell)}`);
    // The destination's view is complete once everything is closed (a CLOSE_RSP can precede its last bytes).
    problems.push(...(await this.leftovers(cell.door)));
    const record = this.destination.records[recordsBefore];
    problems.push(...judge(cell, p, outcome, upload, record));
    return problems;
  }

  private connectTarget(door: DoorKind): ConnectTarget {
    if (door === 'connect-uds') return { path: this.connectUds.uds };
    return {
      port: this.connectTls.tcpPort!,
      ca: this.pki.ca.cert,
      cert: this.pki.client.cert,
      key: this.pki.client.key,
    };
  }

  /**
   * A destination that never reads: once the upload stalled, no process holds
   * more than one window of it; then the destination resets, which the
   * client must see as an abort.
   */
  private async checkStuckBound(door: DoorKind, problems: string[]): Promise<void> {
    await sleep(300);
    for (const [name, state] of [
      ['frontend', this.frontendFor(door).debugState()],
      ['agent', this.agent.debugState()],
    ] as const) {
      const buffered = (state as { maxBuffered: { in: number; out: number } }).maxBuffered;
      // One socket read beyond the credit may wait in the sender (64 KiB reads).
      if (buffered.in > RIG_WINDOW || buffered.out > RIG_WINDOW + 64 * 1024) {
        problems.push(`${name} buffers ${JSON.stringify(buffered)} beyond the window ${RIG_WINDOW}`);
      }
    }
    this.destination.resetAll();
  }

  /** Every tunnel, connection, dial and socket of the cell is gone. */
  private async leftovers(door: DoorKind): Promise<string[]> {
    const frontend = this.frontendFor(door);
    try {
      await eventually(
        () => {
          const fe = frontend.debugState() as Record<string, number>;
          const ag = this.agent.debugState() as Record<string, number>;
          return (
            fe.tunnels === 0 &&
            fe.grpcStreams === 0 &&
            fe.httpConnections === 0 &&
            fe.pendingDials === 0 &&
            fe.blockedTunnels === 0 &&
            ag.tunnels === 0 &&
            ag.sockets === 0 &&
            ag.pendingDials === 0 &&
            this.destination.sockets.size === 0
          );
        },
        'no tunnel, connection or socket left',
        12_000,
      );
      return [];
    } catch {
      return [
        `left behind: frontend ${JSON.stringify(pick(frontend.debugState()))}, agent ${JSON.stringify(
          pick(this.agent.debugState()),
        )}, destination sockets ${this.destination.sockets.size}`,
      ];
    }
  }
}

function pick(state: Record<string, unknown>): Record<string, unknown> {
  const { tunnels, grpcStreams, httpConnections, pendingDials, blockedTunnels, sockets } = state;
  return { tunnels, grpcStreams, httpConnections, pendingDials, blockedTunnels, sockets };
}

export function describeCell(cell: Cell): string {
  return `${cell.door} × ${cell.destination} × ${cell.client} (up ${cell.uploadBytes}, down ${cell.downloadBytes}, seed ${cell.seed})`;
}

/** The verdict on one cell. */
function judge(
  cell: Cell,
  p: Plan,
  outcome: ClientOutcome,
  upload: Buffer,
  record: DestinationRecord | undefined,
): string[] {
  const problems: string[] = [];
  const where = `client saw ${outcome.end} (${outcome.detail}) after ${outcome.data.length} bytes`;
  if (!outcome.orderOk) problems.push('a tunnel byte came before the answer to the dial');
  const udsConnect = cell.door === 'connect-uds';
  if (cell.door === 'grpc-uds' && cell.client === 'sends-fin') {
    // CLOSE_REQ: the client asked to stop, so any end is right; what came before must be the destination's bytes.
    const ofDestination =
      p.expected !== 'error' && p.expected !== 'empty-or-error' ? p.expected.bytes : p.writes;
    if (!isPrefix(outcome.data, ofDestination))
      problems.push(`bytes differ from the destination's; ${where}`);
  } else if (cell.client !== 'resets') {
    const expected = p.expected;
    if (expected === 'error') {
      // Documented limits, where a clean end must still carry only the destination's bytes:
      // a Unix socket has no reset (an abort there is a close); and once the client half-closed, the
      // agent cannot tell a destination's reset right behind its last bytes from a FIN (libuv).
      const halfClosedReset =
        cell.client === 'sends-fin' && cell.door !== 'grpc-uds' && p.behaviour?.end === 'reset';
      if (outcome.end === 'clean' && !((udsConnect && outcome.dialed) || halfClosedReset)) {
        problems.push(`expected an abort the client can see; ${where}`);
      } else if (outcome.end === 'clean' && !isPrefix(outcome.data, p.writes)) {
        problems.push(`bytes differ from the destination's; ${where}`);
      }
    } else if (expected === 'empty-or-error') {
      if (outcome.end === 'clean' && outcome.data.length > 0) problems.push(`expected no bytes; ${where}`);
    } else if (outcome.end !== 'clean' || !outcome.data.equals(expected.bytes)) {
      problems.push(`expected ${expected.bytes.length} exact bytes and a clean end; ${where}`);
    }
  }
  if (record && p.behaviour) {
    const prefix = upload.subarray(0, record.received);
    if (record.hash.copy().digest('hex') !== sha256(prefix)) {
      problems.push(`destination got ${record.received} bytes that are not the client's`);
    }
    // The gRPC door has no half-close: a destination's FIN closes the tunnel (what upstream does).
    const mustHaveAll =
      cell.client !== 'resets' &&
      p.readsUploadBeforeEnd &&
      !p.stuck &&
      (cell.door !== 'grpc-uds' || cell.destination !== 'half-closes-first');
    if (mustHaveAll && record.received !== upload.length) {
      problems.push(`destination got ${record.received} of ${upload.length} upload bytes`);
    }
    if (
      cell.client === 'sends-fin' &&
      cell.door !== 'grpc-uds' &&
      p.readsUploadBeforeEnd &&
      p.behaviour.end === 'fin'
    ) {
      if (record.ended !== 'fin')
        problems.push(`the client's FIN reached the destination as ${record.ended}`);
    }
    // Not where the destination ended first: over gRPC that closed the tunnel before the reset, and over
    // CONNECT our side toward the client is closed by then, where a reset reads like a FIN (libuv; a limit).
    const resetCounts = cell.client === 'resets' && !udsConnect && !p.behaviour.endEarly;
    if (resetCounts && record.ended === 'fin' && record.received < upload.length) {
      problems.push(
        `the client's reset reached the destination as a clean FIN after ${record.received} bytes`,
      );
    }
  }
  return problems;
}

function isPrefix(data: Buffer, of: Buffer): boolean {
  return data.length <= of.length && data.equals(of.subarray(0, data.length));
}

// ---- clients ---------------------------------------------------------------

type ConnectTarget = { path: string } | { port: number; ca: string; cert: string; key: string };

const ESTABLISHED = 'HTTP/1.1 200 Connection Established\r\n\r\n';

/** A raw CONNECT client with half-close and reset under its control. */
async function runConnectClient(
  target: ConnectTarget,
  address: string,
  cell: Cell,
  upload: Buffer,
  onAnswered: (() => Promise<void>) | undefined,
): Promise<ClientOutcome> {
  const { socket, raw } = await openConnectSocket(target);
  const received: Buffer[] = [];
  let ended = false;
  let error: string | undefined;
  let onChange: () => void = () => {};
  socket.on('data', (chunk: Buffer) => {
    received.push(chunk);
    if (cell.client === 'slow-reader') {
      socket.pause();
      setTimeout(() => socket.resume(), 3);
    }
    onChange();
  });
  socket.on('end', () => {
    // A reset right behind data reaches Node as an end (see socket-reset.ts); the kernel knows better.
    if (!socket.writableEnded && endedByReset(socket)) error ??= 'ECONNRESET';
    ended = true;
    onChange();
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    error ??= err.code ?? err.message;
    onChange();
  });
  socket.on('close', () => {
    ended = true;
    onChange();
  });
  const until = (done: () => boolean) =>
    new Promise<void>((resolve) => {
      if (done()) return resolve();
      onChange = () => {
        if (done()) resolve();
      };
    });
  socket.write(`CONNECT ${address} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
  await until(() => Buffer.concat(received).includes('\r\n\r\n') || ended || error !== undefined);
  const all = Buffer.concat(received);
  const headEnd = all.indexOf('\r\n\r\n');
  const outcome = (
    end: 'clean' | 'error',
    detail: string,
    dialed: boolean,
    orderOk = true,
  ): ClientOutcome => {
    const bytes = Buffer.concat(received);
    return {
      end,
      detail,
      data: dialed ? bytes.subarray(ESTABLISHED.length) : Buffer.alloc(0),
      orderOk,
      dialed,
    };
  };
  if (headEnd < 0) {
    socket.destroy();
    return outcome('error', `no response head (${error ?? 'closed'})`, false);
  }
  const head = all.subarray(0, headEnd + 4).toString('latin1');
  if (!head.startsWith('HTTP/1.1 200 ')) {
    socket.destroy();
    const statusOk = /^HTTP\/1\.1 [1-5]\d\d /.test(head);
    return outcome('error', head.split('\r\n')[0]!, false, statusOk);
  }
  const orderOk = head === ESTABLISHED;
  const answered = onAnswered?.();
  // Upload, with the client's behaviour.
  const limit = cell.client === 'resets' ? upload.length >> 1 : upload.length;
  for (let offset = 0; offset < limit && !socket.destroyed && error === undefined; ) {
    const chunk = upload.subarray(offset, Math.min(limit, offset + cell.clientChunk));
    offset += chunk.length;
    if (!socket.write(chunk)) await firstOf(socket, 'drain', socket, 'close');
    if (cell.clientPauseMs > 0) await sleep(cell.clientPauseMs);
  }
  if (cell.client === 'resets') {
    await sleep(5);
    if (raw.remotePort !== undefined) raw.resetAndDestroy();
    else socket.destroy();
    await answered;
    return outcome('error', 'the client reset', true, orderOk);
  }
  // A well-behaved client: sends its FIN after its bytes (at once when it half-closes, else after the reply).
  // Node's own TLS client drops records it has read but not yet decrypted when end() runs in the middle of
  // handling a read (a microtask there); ending from a fresh macrotask keeps the test client honest.
  await new Promise((resolve) => setImmediate(resolve));
  if (cell.client === 'sends-fin') socket.end();
  await until(() => ended || error !== undefined);
  await new Promise((resolve) => setImmediate(resolve));
  if (!socket.writableEnded && !socket.destroyed) socket.end();
  await answered;
  await until(() => socket.destroyed || error !== undefined);
  return outcome(error ? 'error' : 'clean', error ?? 'end', true, orderOk);
}

async function openConnectSocket(target: ConnectTarget): Promise<{ socket: Socket; raw: Socket }> {
  if ('path' in target) {
    const socket = netConnect({ path: target.path, allowHalfOpen: true });
    await once(socket, 'connect');
    return { socket, raw: socket };
  }
  const raw = netConnect({ host: '127.0.0.1', port: target.port, allowHalfOpen: true });
  const socket = tlsConnect({
    socket: raw,
    servername: 'localhost',
    ca: readFileSync(target.ca),
    cert: readFileSync(target.cert),
    key: readFileSync(target.key),
  });
  await once(socket, 'secureConnect');
  return { socket, raw };
}

/** A konnectivity client (grpc-js, from client.proto) with the cell's behaviour. */
async function runGrpcClient(
  uds: string,
  address: string,
  cell: Cell,
  upload: Buffer,
  onAnswered: (() => Promise<void>) | undefined,
): Promise<ClientOutcome> {
  const client = new ProxyStreamClient(`unix:${uds}`);
  try {
    const dial = await client.dial(address);
    const orderOk = dialAnsweredFirst(client, dial.connectID);
    if (dial.error)
      return { end: 'error', detail: dial.error, data: Buffer.alloc(0), orderOk, dialed: false };
    const id = dial.connectID;
    if (cell.client === 'slow-reader') {
      client.on('data', () => {
        client.call.pause();
        setTimeout(() => client.call.resume(), 3);
      });
    }
    const answered = onAnswered?.();
    const limit = cell.client === 'resets' ? upload.length >> 1 : upload.length;
    for (let offset = 0; offset < limit && client.closeError(id) === undefined && !client.ended; ) {
      const chunk = upload.subarray(offset, Math.min(limit, offset + cell.clientChunk));
      offset += chunk.length;
      if (!client.send(id, chunk)) await firstOf(client.call, 'drain', client, 'end');
      if (cell.clientPauseMs > 0) await sleep(cell.clientPauseMs);
    }
    if (cell.client === 'resets') {
      client.close();
      await answered;
      return { end: 'error', detail: 'the client cancelled', data: client.dataOf(id), orderOk, dialed: true };
    }
    if (cell.client === 'sends-fin') client.closeRequest(id);
    const error = await client.waitClosed(id, 25_000);
    await answered;
    return {
      end: error === '' ? 'clean' : 'error',
      detail: error || 'CLOSE_RSP',
      data: client.dataOf(id),
      orderOk: dialAnsweredFirst(client, id),
      dialed: true,
    };
  } finally {
    client.close();
  }
}

/** DIAL_RSP precedes every packet of its connectID. */
function dialAnsweredFirst(client: ProxyStreamClient, connectID: number): boolean {
  for (const packet of client.packets) {
    if (packet.type === T.DIAL_RSP) return true;
    const id = packet.data?.connectID ?? packet.closeResponse?.connectID;
    if (connectID !== 0 && Number(id) === connectID) return false;
  }
  return true;
}

// ---- small helpers ----------------------------------------------------------

function once(emitter: NodeJS.EventEmitter, event: string): Promise<void> {
  return new Promise((resolve) => emitter.once(event, () => resolve()));
}

/** Resolves on whichever event comes first, leaving no listener behind. */
function firstOf(
  a: NodeJS.EventEmitter,
  aEvent: string,
  b: NodeJS.EventEmitter,
  bEvent: string,
): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      a.off(aEvent, done);
      b.off(bEvent, done);
      resolve();
    };
    a.once(aEvent, done);
    b.once(bEvent, done);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function withDeadline<V>(promise: Promise<V>, ms: number, what: string): Promise<V> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<V>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]);
}

/** The matrix's fixed sizes: downloads several windows long, uploads longer than one window. */
export function matrixCell(door: DoorKind, destination: DestinationKind, client: ClientKind): Cell {
  return {
    door,
    destination,
    client,
    uploadBytes: 300_001,
    downloadBytes: 1_500_007,
    seed: 7,
    clientChunk: 64 * 1024,
    clientPauseMs: 0,
    destChunk: 64 * 1024,
    destPauseMs: 0,
  };
}
