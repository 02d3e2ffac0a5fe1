/**
 * A load generator process of the benchmark, forked with an IPC channel: it
 * runs one command at a time (see WorkerCommand) and answers with its result.
 * It runs apart from the measured frontend and agent, as kube-apiserver does,
 * so their figures include no client work.
 */
import { performance } from 'node:perf_hooks';
import { type NatsConnection, connect as natsConnect } from '@nats-io/transport-node';
import {
  bulkHeader,
  type DestinationName,
  type Endpoints,
  type IdleActivateResult,
  type IdleOpenResult,
  type InterleavedResult,
  type Kind,
  type NoisyResult,
  type SamplesResult,
  type ThroughputResult,
  type WorkerCommand,
  type WorkerReply,
  type WorkerRequest,
} from './common.js';
import { floorClient, openNatsFloor, serveFloor } from './nats-floor.js';
import { floorReceive, floorSend } from './nats-relay-floor.js';
import { type Conn, openConnect, openGrpc, openTcp } from './wire.js';

let endpoints: Endpoints | undefined;

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`${what} is not available in this run`);
  return value;
}

function bulkPort(): number {
  return need(endpoints, 'endpoints').dest.bulk;
}

async function open(kind: Kind, dest: DestinationName, ownConnection = true): Promise<Conn> {
  const ep = need(endpoints, 'endpoints');
  const address = `127.0.0.1:${ep.dest[dest]}`;
  switch (kind) {
    case 'direct':
      return openTcp(ep.dest[dest]);
    case 'relay':
      return openTcp(need(ep.relay, 'the TCP relay')[dest]);
    case 'grpc-relay':
      return openGrpc(need(ep.grpcRelayUds, 'the gRPC relay'), address, ownConnection);
    case 'grpc':
      return openGrpc(need(ep.grpcUds, 'the gRPC frontend'), address, ownConnection);
    case 'connect':
      return openConnect(need(ep.connectUds, 'the HTTP CONNECT frontend'), address);
    case 'nats':
      return openNatsFloor(need(ep.natsUrl, 'the nats-server'), ep.dest[dest]);
    case 'nats-relay':
      if (dest !== 'echo') throw new Error('the minimal NATS tunnel serves the echo destination only');
      return openTcp(need(ep.natsRelayPort, 'the minimal NATS tunnel'));
  }
}

/** Resolves when `conn` has delivered `bytes` bytes (counted, then dropped). */
function receive(conn: Conn, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = 0;
    conn.onClose((err) => reject(err ?? new Error(`closed after ${got} of ${bytes} bytes`)));
    conn.onData((chunk) => {
      got += chunk.length;
      if (got >= bytes) {
        conn.onData(() => {});
        conn.onClose(() => {});
        resolve();
      }
    });
  });
}

/** Writes `bytes` bytes in `chunk`-sized writes, honouring backpressure. */
function send(conn: Conn, bytes: number, chunk: Buffer): Promise<void> {
  return new Promise((resolve) => {
    let left = bytes;
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        left -= n;
        if (!conn.write(n === chunk.length ? chunk : chunk.subarray(0, n)) && left > 0) {
          conn.onDrain(pump);
          return;
        }
      }
      resolve();
    };
    pump();
  });
}

/** One transfer on an open connection to the bulk destination; seconds. */
async function transfer(conn: Conn, dir: 'up' | 'down', bytes: number, chunk: Buffer): Promise<number> {
  const started = performance.now();
  if (dir === 'up') {
    const acked = receive(conn, 6);
    conn.write(bulkHeader('U', bytes));
    await send(conn, bytes, chunk);
    await acked;
  } else {
    const received = receive(conn, bytes);
    conn.write(bulkHeader('D', bytes));
    await received;
  }
  return (performance.now() - started) / 1000;
}

/** A warm-up transfer (JIT, windows), then the measured one, on the same tunnel. */
async function throughput(kind: Kind, dir: 'up' | 'down', bytes: number, chunkSize: number, warmup: number) {
  const conn = await open(kind, 'bulk');
  const chunk = Buffer.alloc(chunkSize, 0xa5);
  try {
    if (warmup > 0) await transfer(conn, dir, warmup, chunk);
    const result: ThroughputResult = { seconds: await transfer(conn, dir, bytes, chunk), bytes };
    return result;
  } finally {
    conn.close();
  }
}

/** `count` sequential echo round trips of `size` bytes on an open connection; µs each. */
async function roundTrips(conn: Conn, count: number, size: number, warmup: number): Promise<number[]> {
  const payload = Buffer.alloc(size, 0x42);
  const samples: number[] = [];
  for (let i = 0; i < warmup + count; i++) {
    const started = performance.now();
    const echoed = receive(conn, size);
    conn.write(payload);
    await echoed;
    if (i >= warmup) samples.push((performance.now() - started) * 1000);
  }
  return samples;
}

async function roundtrip(kind: Kind, tunnels: number, count: number, size: number, warmup: number) {
  const conns = await Promise.all(Array.from({ length: tunnels }, () => open(kind, 'echo')));
  try {
    const started = performance.now();
    const results = await Promise.all(conns.map((c) => roundTrips(c, count, size, warmup)));
    const result: SamplesResult = {
      samples: results.flat(),
      seconds: (performance.now() - started) / 1000,
      failed: 0,
    };
    return result;
  } finally {
    for (const c of conns) c.close();
  }
}

/**
 * Round trips on one connection per kind, taken in turns of `batch` so that
 * whatever else the machine does meanwhile hits every kind alike.
 */
async function roundtripInterleaved(
  kinds: Kind[],
  count: number,
  size: number,
  warmup: number,
  batch: number,
) {
  const conns = await Promise.all(kinds.map((kind) => open(kind, 'echo')));
  try {
    const samples: Record<string, number[]> = {};
    for (const [i, conn] of conns.entries()) {
      await roundTrips(conn, 0, size, warmup);
      samples[kinds[i]!] = [];
    }
    for (let done = 0; done < count; done += batch) {
      const n = Math.min(batch, count - done);
      for (const [i, conn] of conns.entries())
        samples[kinds[i]!]!.push(...(await roundTrips(conn, n, size, 0)));
    }
    const result: InterleavedResult = { samples };
    return result;
  } finally {
    for (const c of conns) c.close();
  }
}

/**
 * Single-use dials as kube-apiserver makes them (new connection, stream,
 * DIAL_REQ, DIAL_RSP, close the connection); µs from the start to DIAL_RSP.
 * For 'direct' and 'relay': a TCP connect and close.
 */
async function dials(kind: Kind, count: number, concurrency: number, ownConnection: boolean) {
  const samples: number[] = [];
  let failed = 0;
  let firstError: string | undefined;
  let next = 0;
  const started = performance.now();
  const runner = async () => {
    while (next < count) {
      next++;
      const t0 = performance.now();
      try {
        const conn = await open(kind, 'echo', ownConnection);
        samples.push((performance.now() - t0) * 1000);
        conn.close();
      } catch (err) {
        failed++;
        firstError ??= String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, runner));
  const result: SamplesResult = { samples, seconds: (performance.now() - started) / 1000, failed };
  if (firstError) result.firstError = firstError;
  return result;
}

const idle: Conn[] = [];

async function idleOpen(kind: Kind, count: number, concurrency: number) {
  let failed = 0;
  let firstError: string | undefined;
  let next = 0;
  const started = performance.now();
  const runner = async () => {
    while (next < count) {
      next++;
      try {
        const conn = await open(kind, 'bulk');
        conn.onClose(() => {});
        idle.push(conn);
      } catch (err) {
        failed++;
        firstError ??= String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, runner));
  const result: IdleOpenResult = {
    opened: count - failed,
    failed,
    seconds: (performance.now() - started) / 1000,
  };
  if (firstError) result.firstError = firstError;
  return result;
}

async function idleActivate(count: number, bytes: number) {
  const active = idle.slice(0, count);
  let failed = 0;
  let firstError: string | undefined;
  const durations: number[] = [];
  const started = performance.now();
  await Promise.all(
    active.map(async (conn) => {
      const t0 = performance.now();
      try {
        const received = receive(conn, bytes);
        conn.write(bulkHeader('D', bytes));
        await received;
        durations.push((performance.now() - t0) / 1000);
      } catch (err) {
        failed++;
        firstError ??= String(err);
      }
    }),
  );
  const result: IdleActivateResult = {
    durations,
    seconds: (performance.now() - started) / 1000,
    bytes: bytes * durations.length,
    failed,
  };
  if (firstError) result.firstError = firstError;
  return result;
}

function idleClose(): { closed: number } {
  const n = idle.length;
  for (const conn of idle.splice(0)) conn.close();
  return { closed: n };
}

let noisy: Conn | undefined;

/** Opens a tunnel to the blackhole and writes into it until writes stall for `stallMs`. */
async function noisyStart(kind: Kind, chunkSize: number, stallMs: number): Promise<NoisyResult> {
  const conn = await open(kind, 'blackhole');
  noisy = conn;
  conn.onClose(() => {});
  const chunk = Buffer.alloc(chunkSize, 0x33);
  let accepted = 0;
  let lastProgress = performance.now();
  const pump = (): void => {
    for (;;) {
      accepted += chunk.length;
      lastProgress = performance.now();
      if (!conn.write(chunk)) {
        conn.onDrain(pump);
        return;
      }
    }
  };
  pump();
  while (performance.now() - lastProgress < stallMs) await sleep(50);
  return { bytesAccepted: accepted };
}

function noisyStop(): { stopped: boolean } {
  noisy?.close();
  const had = noisy !== undefined;
  noisy = undefined;
  return { stopped: had };
}

// ---- the raw NATS ceiling ------------------------------------------------------

let natsConn: NatsConnection | undefined;

/**
 * Publishes `bytes` of payload in `msgSize` messages, never past the
 * subscriber's absolute credit grant (6-byte offsets on creditSubject).
 * Emits 'ready' once subscribed for credit; resolves when all was published.
 */
async function natsPub(url: string, subject: string, creditSubject: string, msgSize: number, bytes: number) {
  const nc = await natsConnect({ servers: url, name: 'bench-pub' });
  natsConn = nc;
  const message = Buffer.alloc(msgSize, 0x77);
  const total = Math.ceil(bytes / msgSize);
  let sent = 0;
  let sentBytes = 0;
  let limit = 0;
  await new Promise<void>((resolve, reject) => {
    nc.subscribe(creditSubject, {
      callback: (err, msg) => {
        if (err) {
          reject(err);
          return;
        }
        limit = Math.max(limit, Buffer.from(msg.data).readUIntBE(0, 6));
        while (sent < total && sentBytes + msgSize <= limit) {
          nc.publish(subject, message);
          sent++;
          sentBytes += msgSize;
        }
        if (sent === total) resolve();
      },
    });
    nc.flush().then(
      () => process.send?.({ id: 0, event: 'ready' } satisfies WorkerReply),
      (err: unknown) => reject(err),
    );
  });
  await nc.flush();
  return { messages: sent };
}

/**
 * Receives `bytes` of payload, granting credit as the tunnel does: absolute
 * offsets, a new grant once a quarter of the window was consumed. Times from
 * the first grant to the last byte.
 */
async function natsSub(
  url: string,
  subject: string,
  creditSubject: string,
  window: number,
  msgSize: number,
  payloadPerMsg: number,
  bytes: number,
  warmupMessages: number,
) {
  const nc = await natsConnect({ servers: url, name: 'bench-sub' });
  natsConn = nc;
  const total = Math.ceil(bytes / msgSize);
  const grant = (limit: number) => {
    const b = Buffer.allocUnsafe(6);
    b.writeUIntBE(limit, 0, 6);
    nc.publish(creditSubject, b);
  };
  let started = 0;
  const seconds = await new Promise<number>((resolve, reject) => {
    let received = 0;
    let consumed = 0;
    let limit = window;
    nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) {
          reject(err);
          return;
        }
        received++;
        consumed += msg.data.length;
        if (received === warmupMessages) started = performance.now();
        if (received === total) {
          resolve((performance.now() - started) / 1000);
          return;
        }
        if (consumed + window - limit >= window / 4) {
          limit = consumed + window;
          grant(limit);
        }
      },
    });
    nc.flush().then(() => {
      started = performance.now();
      grant(limit);
    }, reject);
  });
  const result: ThroughputResult = { seconds, bytes: (total - warmupMessages) * payloadPerMsg };
  return result;
}

async function closeNats(): Promise<void> {
  const nc = natsConn;
  natsConn = undefined;
  await nc?.close();
}

// ---- dispatch --------------------------------------------------------------------

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function run(command: WorkerCommand): Promise<unknown> {
  switch (command.cmd) {
    case 'init':
      endpoints = command.endpoints;
      if (endpoints.natsUrl) await floorClient(endpoints.natsUrl);
      return { pid: process.pid };
    case 'nats-floor-serve':
      await serveFloor(need(endpoints?.natsUrl, 'the nats-server'));
      return { serving: true };
    case 'throughput':
      return throughput(command.kind, command.dir, command.bytes, command.chunk, command.warmup);
    case 'roundtrip':
      return roundtrip(command.kind, command.tunnels, command.count, command.size, command.warmup);
    case 'roundtrip-interleaved':
      return roundtripInterleaved(command.kinds, command.count, command.size, command.warmup, command.batch);
    case 'dials':
      return dials(command.kind, command.count, command.concurrency, command.ownConnection ?? true);
    case 'idle-open':
      return idleOpen(command.kind, command.count, command.concurrency);
    case 'idle-activate':
      return idleActivate(command.count, command.bytes);
    case 'idle-close':
      return idleClose();
    case 'noisy-start':
      return noisyStart(command.kind, command.chunk, command.stallMs);
    case 'noisy-stop':
      return noisyStop();
    case 'nats-pub':
      try {
        return await natsPub(
          command.url,
          command.subject,
          command.creditSubject,
          command.msgSize,
          command.bytes,
        );
      } finally {
        await closeNats();
      }
    case 'floor-send':
      return floorSend(
        command.url,
        command.subject,
        command.creditSubject,
        bulkPort(),
        command.bytes,
        command.streams,
        () => process.send?.({ id: 0, event: 'ready' } satisfies WorkerReply),
      );
    case 'floor-receive':
      return floorReceive(
        command.url,
        command.subject,
        command.creditSubject,
        bulkPort(),
        command.window,
        command.bytes,
        command.streams,
      );
    case 'nats-sub':
      try {
        return await natsSub(
          command.url,
          command.subject,
          command.creditSubject,
          command.window,
          command.msgSize,
          command.payloadPerMsg,
          command.bytes,
          command.warmupMessages,
        );
      } finally {
        await closeNats();
      }
  }
}

process.on('message', (request: WorkerRequest) => {
  run(request.command).then(
    (result) => process.send?.({ id: request.id, result } satisfies WorkerReply),
    (err: unknown) =>
      process.send?.({
        id: request.id,
        error: err instanceof Error ? err.message : String(err),
      } satisfies WorkerReply),
  );
});
process.on('disconnect', () => process.exit(0));
