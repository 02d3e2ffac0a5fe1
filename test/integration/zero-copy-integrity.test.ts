/**
 * Attacks on the zero-copy bus data path (vectored flush, pooled frame
 * buffers, the gRPC door's reused serialize buffer) with real processes:
 * a nats-server (plain or TLS), frontend and agent children of the real CLI.
 *
 * Every tunnel carries seeded bytes both ways and is checked against what
 * it must carry: each chunk the client receives is compared with the
 * expected bytes at its offset, so a pooled buffer reused too early shows
 * as a mismatch even in a tunnel that fails later. A tunnel may fail
 * visibly (an error CLOSE_RSP, a reset CONNECT socket) where the test
 * injects a fault; it must never end cleanly short or carry wrong bytes.
 * Seeds are fixed, so a failure replays.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { freePort, startLocalServer } from '../../broker/nats-server/local-server.js';
import { createPki, type Pki } from '../helpers/certs.js';
import { randomBytesSeeded } from '../helpers/destinations.js';
import { Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** xorshift32 in [0, 1): the test's only source of randomness. */
function seededRandom(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** Write sizes around the frame and pool boundaries (SMALL_READ_BYTES 8160, MAX_DATA_PAYLOAD 32640). */
const ODD_SIZES = [
  1, 17, 1000, 4095, 4096, 8159, 8160, 8161, 16_384, 32_639, 32_640, 32_641, 65_536, 100_000,
];

/**
 * A destination that reads a 12-byte header (seed, upload length, download
 * length), then the upload; it answers the upload's sha256, then the
 * download (randomBytesSeeded(length, seed)) in seeded write sizes with
 * seeded pauses, then ends its side.
 */
async function seededDestination(): Promise<{ address: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer({ noDelay: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    let header: Buffer | undefined = Buffer.alloc(0);
    let seed = 0;
    let uploadLeft = 0;
    let downloadBytes = 0;
    const hash = createHash('sha256');
    const answer = async () => {
      s.write(hash.digest());
      const download = randomBytesSeeded(downloadBytes, seed);
      const random = seededRandom(seed ^ 0x5a5a5a5a);
      for (let off = 0; off < download.length && !s.destroyed; ) {
        const n = ODD_SIZES[Math.floor(random() * ODD_SIZES.length)]!;
        const ok = s.write(download.subarray(off, off + n));
        off += n;
        if (!ok) await new Promise((r) => s.once('drain', r));
        else if (random() < 0.2) await new Promise((r) => setTimeout(r, random() < 0.5 ? 0 : 2));
      }
      s.end();
    };
    s.on('data', (chunk: Buffer) => {
      if (header) {
        header = Buffer.concat([header, chunk]);
        if (header.length < 12) return;
        seed = header.readUInt32BE(0);
        uploadLeft = header.readUInt32BE(4);
        downloadBytes = header.readUInt32BE(8);
        chunk = header.subarray(12);
        header = undefined;
        if (uploadLeft === 0) void answer();
      }
      if (chunk.length === 0) return;
      hash.update(chunk);
      uploadLeft -= chunk.length;
      if (uploadLeft === 0) void answer();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

interface TunnelPlan {
  readonly seed: number;
  readonly upload: number;
  readonly download: number;
}

function plans(count: number, seed: number, maxUp: number, maxDown: number): TunnelPlan[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, (_, i) => ({
    seed: seed * 1000 + i + 1,
    upload: Math.floor(random() * maxUp),
    download: Math.floor(random() * maxDown) + 1,
  }));
}

function headerOf(plan: TunnelPlan): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt32BE(plan.seed, 0);
  header.writeUInt32BE(plan.upload, 4);
  header.writeUInt32BE(plan.download, 8);
  return header;
}

/** With ZC_DEBUG set (running the file with plain `node`), the unfinished tunnels' progress every 5 s: where a hang is. */
const live = new Set<ExpectedStream>();
if (process.env.ZC_DEBUG)
  setInterval(() => {
    console.error(
      [...live]
        .filter((s) => !s.ended)
        .map((s) => `${s.label}:${s.received}/${s.expected.length}`)
        .join(' '),
    );
  }, 5000).unref();

/**
 * What a client received, checked as it arrives: the upload's sha256, then
 * the download, each chunk against the expected bytes at its offset.
 */
class ExpectedStream {
  readonly expected: Buffer;
  received = 0;
  ended = '';
  firstMismatch: number | undefined;
  constructor(
    readonly plan: TunnelPlan,
    readonly label: string,
  ) {
    const upload = randomBytesSeeded(plan.upload, plan.seed ^ 0x77777777);
    this.expected = Buffer.concat([
      createHash('sha256').update(upload).digest(),
      randomBytesSeeded(plan.download, plan.seed),
    ]);
  }
  get uploadBytes(): Buffer {
    return randomBytesSeeded(this.plan.upload, this.plan.seed ^ 0x77777777);
  }
  take(chunk: Uint8Array): void {
    if (process.env.ZC_DEBUG && this.received === 0) live.add(this);
    if (this.firstMismatch === undefined) {
      const want = this.expected.subarray(this.received, this.received + chunk.length);
      if (want.length !== chunk.length || !want.equals(chunk)) {
        let i = 0;
        while (i < want.length && want[i] === chunk[i]) i++;
        this.firstMismatch = this.received + i;
      }
    }
    this.received += chunk.length;
  }
  get complete(): boolean {
    return this.received === this.expected.length && this.firstMismatch === undefined;
  }
  /** Wrong bytes are never acceptable; a short transfer only with a visible error. */
  verdict(endedWithError: string): string | undefined {
    if (this.firstMismatch !== undefined)
      return `${this.label}: wrong bytes at offset ${this.firstMismatch} of ${this.expected.length} (error: ${endedWithError || 'none'})`;
    if (this.received > this.expected.length)
      return `${this.label}: ${this.received - this.expected.length} bytes too many`;
    if (!endedWithError && this.received !== this.expected.length)
      return `${this.label}: ended cleanly after ${this.received} of ${this.expected.length} bytes`;
    return undefined;
  }
}

/** Clients made with these options share one HTTP/2 connection (grpc-js's global subchannel pool). */
const SHARED_CONNECTION = { 'grpc.use_local_subchannel_pool': 0 };

/** How the tunnels of the running test ended (reported per test). */
const outcomes = { exact: 0, failed: 0 };

/** A gRPC client that pauses its stream now and then (HTTP/2 flow control pushes back on the frontend). */
function slowReader(client: ProxyStreamClient, seed: number): () => void {
  const random = seededRandom(seed);
  let stopped = false;
  const tick = () => {
    if (stopped) return;
    client.call.pause();
    setTimeout(
      () => {
        if (stopped) return;
        client.call.resume();
        setTimeout(tick, 5 + random() * 30);
      },
      5 + random() * 40,
    );
  };
  setTimeout(tick, random() * 20);
  return () => {
    stopped = true;
    client.call.resume();
  };
}

/** One tunnel through a gRPC door: returns undefined when it carried exactly its bytes, else why not. */
async function grpcTunnel(
  client: ProxyStreamClient,
  destination: string,
  plan: TunnelPlan,
  label: string,
  allowFailure: boolean,
): Promise<string | undefined> {
  const stream = new ExpectedStream(plan, label);
  const dial = await client.dial(destination);
  if (dial.error) return allowFailure ? undefined : `${label}: dial failed: ${dial.error}`;
  const onData = (id: number, data: Buffer) => {
    if (id === dial.connectID) stream.take(data);
  };
  client.on('data', onData);
  const random = seededRandom(plan.seed);
  const body = Buffer.concat([headerOf(plan), stream.uploadBytes]);
  // Message sizes around the frame boundaries (tiny messages would only cost CPU here).
  const sizes = ODD_SIZES.filter((n) => n >= 4096);
  const chunk = sizes[Math.floor(random() * sizes.length)]!;
  // As sendAll, but a stream the client resets never drains: stop writing then.
  const ended = new Promise((r) => (client.ended ? r(undefined) : client.once('end', r)));
  for (let off = 0; off < body.length && !client.ended; off += chunk) {
    if (!client.send(dial.connectID, body.subarray(off, off + chunk)))
      await Promise.race([new Promise((r) => client.call.once('drain', r)), ended]);
  }
  const closeError = await client.waitClosed(dial.connectID, 90_000).catch((err: Error) => err.message);
  client.off('data', onData);
  stream.ended = closeError || 'clean';
  outcomes[closeError ? 'failed' : 'exact']++;
  const problem = stream.verdict(closeError);
  if (problem) return problem;
  if (!closeError) return undefined;
  return allowFailure ? undefined : `${label}: failed: ${closeError} after ${stream.received} bytes`;
}

/**
 * An HTTP CONNECT door: on a Unix socket (no TCP reset there, so an abort
 * looks like a close), or on mTLS TCP (an abort is a reset).
 */
type ConnectDoor = { path: string } | { port: number; ca: Buffer; cert: Buffer; key: Buffer };

/** One tunnel through an HTTP CONNECT door. */
async function connectTunnel(
  door: ConnectDoor,
  destination: string,
  plan: TunnelPlan,
  label: string,
  allowFailure: boolean,
): Promise<string | undefined> {
  const stream = new ExpectedStream(plan, label);
  const socket =
    'path' in door
      ? netConnect({ path: door.path })
      : tlsConnect({ host: '127.0.0.1', port: door.port, ca: door.ca, cert: door.cert, key: door.key });
  let head = Buffer.alloc(0);
  let headDone = false;
  let error = '';
  socket.on('error', (err: NodeJS.ErrnoException) => {
    error = err.code ?? err.message;
  });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  const ready = new Promise<string>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      if (headDone) {
        stream.take(chunk);
        return;
      }
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      headDone = true;
      resolve(head.subarray(0, end).toString('latin1').split('\r\n')[0]!);
      const rest = head.subarray(end + 4);
      if (rest.length > 0) stream.take(rest);
    });
    socket.on('close', () => resolve('closed'));
  });
  socket.write(`CONNECT ${destination} HTTP/1.1\r\nHost: ${destination}\r\n\r\n`);
  const status = await ready;
  if (!/ 200 /.test(status)) {
    socket.destroy();
    return allowFailure ? undefined : `${label}: CONNECT answered ${status}`;
  }
  const body = Buffer.concat([headerOf(plan), stream.uploadBytes]);
  const random = seededRandom(plan.seed);
  for (let off = 0; off < body.length && !socket.destroyed; ) {
    const n = ODD_SIZES[Math.floor(random() * ODD_SIZES.length)]!;
    if (!socket.write(body.subarray(off, off + n))) {
      await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
    }
    off += n;
  }
  // The tunnel ends with the destination's FIN (clean: 'end' without error) or a reset (visible).
  const timer = setTimeout(() => socket.destroy(new Error('timeout')), 90_000);
  await closed;
  clearTimeout(timer);
  stream.ended = error || 'clean';
  outcomes[error ? 'failed' : 'exact']++;
  const problem = stream.verdict(error);
  if (problem) return problem;
  if (!error) return undefined;
  return allowFailure ? undefined : `${label}: failed: ${error} after ${stream.received} bytes`;
}

/**
 * Runs every plan at once: the gRPC ones spread over `clients`, the CONNECT
 * ones each on a connection of its own. Resolves with what went wrong.
 */
async function transfers(load: {
  destination: string;
  clients: ProxyStreamClient[];
  grpcPlans: TunnelPlan[];
  connectDoor?: ConnectDoor;
  connectPlans?: TunnelPlan[];
  allowFailure?: boolean;
  label?: string;
}): Promise<string[]> {
  const allowFailure = load.allowFailure ?? false;
  const label = load.label ?? 'grpc';
  const problems = await Promise.all([
    ...load.grpcPlans.map((plan, i) =>
      grpcTunnel(
        load.clients[i % load.clients.length]!,
        load.destination,
        plan,
        `${label} tunnel ${i}`,
        allowFailure,
      ),
    ),
    ...(load.connectPlans ?? []).map((plan, i) =>
      connectTunnel(load.connectDoor!, load.destination, plan, `CONNECT tunnel ${i}`, allowFailure),
    ),
  ]);
  return problems.filter((p) => p !== undefined);
}

function assertNoProblems(problems: string[]): void {
  assert.deepEqual(problems, []);
}

/** SIGSTOP `pid` after `afterMs`, SIGCONT `forMs` later. */
async function freeze(pid: number, afterMs: number, forMs: number): Promise<void> {
  await new Promise((r) => setTimeout(r, afterMs));
  process.kill(pid, 'SIGSTOP');
  await new Promise((r) => setTimeout(r, forMs));
  process.kill(pid, 'SIGCONT');
}

/** After a fault: new tunnels (once dials succeed again) carry their bytes exactly. */
async function assertFreshTunnelsExact(grpcUds: string, destination: string, seed: number): Promise<void> {
  const client = new ProxyStreamClient(`unix:${grpcUds}`);
  let problems: string[] = [];
  const deadline = Date.now() + 20_000;
  do {
    await new Promise((r) => setTimeout(r, 250));
    problems = await transfers({
      destination,
      clients: [client],
      grpcPlans: plans(4, seed, 1 * MiB, 2 * MiB),
      label: 'fresh',
    });
  } while (problems.some((p) => p.includes('dial failed')) && Date.now() < deadline);
  client.close();
  assertNoProblems(problems);
}

/**
 * Two gRPC clients (and the CONNECT door, given plans for it) transfer while
 * `fault` runs: every tunnel ends byte-exact or failed visibly, and new
 * tunnels afterwards carry their bytes exactly.
 */
async function transfersThroughFault(
  at: { grpcUds: string; destination: string; connectDoor?: ConnectDoor },
  load: { grpcPlans: TunnelPlan[]; connectPlans?: TunnelPlan[]; freshSeed: number },
  fault: () => Promise<void>,
): Promise<void> {
  const clients = Array.from({ length: 2 }, () => new ProxyStreamClient(`unix:${at.grpcUds}`));
  const running = transfers({
    destination: at.destination,
    clients,
    grpcPlans: load.grpcPlans,
    ...(load.connectPlans ? { connectDoor: at.connectDoor!, connectPlans: load.connectPlans } : {}),
    allowFailure: true,
  });
  await fault();
  assertNoProblems(await running);
  for (const c of clients) c.close();
  await assertFreshTunnelsExact(at.grpcUds, at.destination, load.freshSeed);
}

function natsTlsConfig(pki: Pki): string {
  return `tls { cert_file: "${pki.server.cert}", key_file: "${pki.server.key}", timeout: 2 }`;
}

describe('zero-copy data path: byte-exact under load and faults (real processes)', () => {
  let pki: Pki;
  let dir: Fleet;

  before(() => {
    dir = new Fleet();
    pki = createPki(join(dir.dir, 'pki'));
  });
  after(async () => {
    await dir.stop();
  });

  beforeEach(() => {
    outcomes.exact = 0;
    outcomes.failed = 0;
  });
  afterEach((t) => {
    if ('diagnostic' in t)
      t.diagnostic(`tunnels ended: ${outcomes.exact} complete, ${outcomes.failed} failed visibly`);
  });

  async function withFleet(
    options: {
      tls?: boolean;
      frontendFlags?: string[];
      agentFlags?: string[];
      connectDoor?: boolean;
      maxPending?: number;
      maxPayload?: number;
    },
    body: (ctx: {
      fleet: Fleet;
      grpcUds: string;
      connectDoor: ConnectDoor;
      destination: string;
      agent: { child: ChildProcess; healthPort: number };
      grpcFrontend: { child: ChildProcess };
    }) => Promise<void>,
  ): Promise<void> {
    const fleet = new Fleet();
    const destination = await seededDestination();
    try {
      fleet.nats = await startLocalServer({
        ...(options.tls ? { extraConfig: natsTlsConfig(pki) } : {}),
        ...(options.maxPending ? { maxPending: options.maxPending, maxPayload: 64 * KiB } : {}),
        ...(options.maxPayload ? { maxPayload: options.maxPayload } : {}),
      });
      const tlsFlags = options.tls ? ['--nats-tls-ca', pki.ca.cert] : [];
      const grpcUds = fleet.socketPath();
      const grpcFrontend = await fleet.spawnFrontend(grpcUds, [
        ...tlsFlags,
        ...(options.frontendFlags ?? []),
      ]);
      const spawned = [grpcFrontend];
      // The CONNECT door on mTLS TCP: only there can it show an abort to its client (a TCP reset).
      const connectPort = await freePort();
      if (options.connectDoor)
        spawned.push(
          await fleet.spawn(
            [
              'frontend',
              '--nats-url',
              fleet.nats.url,
              '--mode',
              'http-connect',
              '--server-port',
              String(connectPort),
              '--server-cert',
              pki.server.cert,
              '--server-key',
              pki.server.key,
              '--server-ca-cert',
              pki.ca.cert,
              '--health-port',
              '0',
              '--admin-port',
              '0',
              ...tlsFlags,
              ...(options.frontendFlags ?? []),
            ],
            'frontend ready',
          ),
        );
      const agent = await fleet.spawnAgent([...tlsFlags, ...(options.agentFlags ?? [])]);
      spawned.push(agent);
      const connectDoor: ConnectDoor = {
        port: connectPort,
        ca: readFileSync(pki.ca.cert),
        cert: readFileSync(pki.client.cert),
        key: readFileSync(pki.client.key),
      };
      await body({ fleet, grpcUds, connectDoor, destination: destination.address, agent, grpcFrontend });
      // What was tested is the vectored flush, not nats.js's own (the fallback when its internals are missing).
      for (const { logs } of spawned)
        assert.deepEqual(
          logs.filter((l) => /vectored flush/.test(String(l.msg))),
          [],
        );
    } finally {
      await destination.close();
      await fleet.stop();
    }
  }

  it('NATS over TLS: 32 gRPC tunnels on 8 streams, 4 of them sharing one connection (3 slow readers), and 8 CONNECT tunnels, both ways at once', async () => {
    await withFleet({ tls: true, connectDoor: true }, async ({ grpcUds, connectDoor, destination }) => {
      // Four streams on connections of their own, four more sharing one HTTP/2 connection.
      const clients = [
        ...Array.from({ length: 4 }, () => new ProxyStreamClient(`unix:${grpcUds}`)),
        ...Array.from(
          { length: 4 },
          () => new ProxyStreamClient(`unix:${grpcUds}`, undefined, SHARED_CONNECTION),
        ),
      ];
      const stops = [slowReader(clients[0]!, 11), slowReader(clients[1]!, 12), slowReader(clients[4]!, 13)];
      assertNoProblems(
        await transfers({
          destination,
          clients,
          grpcPlans: plans(32, 1, 2 * MiB, 3 * MiB),
          connectDoor,
          connectPlans: plans(8, 2, 2 * MiB, 3 * MiB),
        }),
      );
      for (const stop of stops) stop();
      for (const c of clients) c.close();
    });
  });

  // Two ways to make reads split across frames: credit shorter than a read, frames shorter than a read.
  const credit = ['--tunnel-window', String(64 * KiB), '--receive-budget', '0'];
  for (const split of [
    {
      what: 'credit short both ways (64 KiB window, no budget): reads split across frames, odd write sizes',
      options: { frontendFlags: credit, agentFlags: credit },
      seed: 3,
      grpc: 12,
      connect: 6,
      maxBytes: 2 * MiB,
    },
    {
      what: 'NATS max_payload of 12 KiB: frames smaller than a read, so reads split (in place, then pooled copies)',
      options: { maxPayload: 12 * KiB },
      seed: 20,
      grpc: 10,
      connect: 4,
      maxBytes: 3 * MiB,
    },
  ]) {
    it(`${split.what}, byte-exact`, async () => {
      await withFleet(
        { connectDoor: true, ...split.options },
        async ({ grpcUds, connectDoor, destination }) => {
          const clients = Array.from({ length: 3 }, () => new ProxyStreamClient(`unix:${grpcUds}`));
          const stop = slowReader(clients[0]!, split.seed + 100);
          assertNoProblems(
            await transfers({
              destination,
              clients,
              grpcPlans: plans(split.grpc, split.seed, 1 * MiB, split.maxBytes),
              connectDoor,
              connectPlans: plans(split.connect, split.seed + 1, 1 * MiB, split.maxBytes),
            }),
          );
          stop();
          for (const c of clients) c.close();
        },
      );
    });
  }

  // Shorter than nats.js's ping timeout (the connection survives), and longer (it is dropped and redialed).
  for (const stall of [
    { ms: 1500, what: '', seed: 5, maxDown: 8 * MiB, grpc: 12, connect: 6 },
    { ms: 12_000, what: ' past the ping timeout', seed: 15, maxDown: 16 * MiB, grpc: 8, connect: 4 },
  ]) {
    it(`nats-server over TLS stalled${stall.what} (SIGSTOP ${stall.ms / 1000} s) mid-transfer: every tunnel byte-exact or failed visibly, then new tunnels work`, async () => {
      await withFleet(
        { tls: true, connectDoor: true },
        async ({ fleet, grpcUds, connectDoor, destination }) =>
          transfersThroughFault(
            { grpcUds, destination, connectDoor },
            {
              grpcPlans: plans(stall.grpc, stall.seed, 4 * MiB, stall.maxDown),
              connectPlans: plans(stall.connect, stall.seed + 1, 4 * MiB, stall.maxDown),
              freshSeed: stall.seed + 2,
            },
            () => freeze(fleet.nats.pid, 400, stall.ms),
          ),
      );
    });
  }

  it('a frontend frozen (SIGSTOP 3 s) behind a small NATS max_pending (slow consumer) mid-download: every tunnel byte-exact or failed visibly, then new tunnels work', async () => {
    await withFleet({ maxPending: 256 * KiB }, async ({ grpcUds, destination, grpcFrontend }) =>
      transfersThroughFault(
        { grpcUds, destination },
        { grpcPlans: plans(10, 18, 256 * KiB, 16 * MiB), freshSeed: 19 },
        () => freeze(grpcFrontend.child.pid!, 400, 3000),
      ),
    );
  });

  it('nats-server over TLS killed and restarted mid-transfer: every tunnel byte-exact or failed visibly, then new tunnels work', async () => {
    await withFleet({ tls: true, connectDoor: true }, async ({ fleet, grpcUds, connectDoor, destination }) =>
      transfersThroughFault(
        { grpcUds, destination, connectDoor },
        {
          grpcPlans: plans(12, 7, 4 * MiB, 8 * MiB),
          connectPlans: plans(6, 8, 4 * MiB, 8 * MiB),
          freshSeed: 9,
        },
        async () => {
          await new Promise((r) => setTimeout(r, 400));
          const port = fleet.nats.port;
          fleet.nats.kill();
          await fleet.nats.exited;
          await new Promise((r) => setTimeout(r, 300));
          fleet.nats = await startLocalServer({ port, extraConfig: natsTlsConfig(pki) });
        },
      ),
    );
  });

  it('clients that reset their streams mid-transfer leave the other tunnels byte-exact', async () => {
    await withFleet({ connectDoor: true }, async ({ grpcUds, connectDoor, destination }) => {
      // All on one HTTP/2 connection: the resets are of streams beside the steady ones.
      const steady = Array.from(
        { length: 2 },
        () => new ProxyStreamClient(`unix:${grpcUds}`, undefined, SHARED_CONNECTION),
      );
      const stop = slowReader(steady[0]!, 31);
      const doomed = Array.from(
        { length: 4 },
        () => new ProxyStreamClient(`unix:${grpcUds}`, undefined, SHARED_CONNECTION),
      );
      const random = seededRandom(41);
      // Each doomed stream is reset once it has received a seeded amount, so its tunnels are mid-transfer.
      const resets = doomed.map((client) => {
        const resetAfter = 64 * KiB + Math.floor(random() * MiB);
        let received = 0;
        return new Promise<void>((resolve) => {
          const onData = (_id: number, data: Buffer) => {
            received += data.length;
            if (received < resetAfter) return;
            client.off('data', onData);
            client.close();
            resolve();
          };
          client.on('data', onData);
        });
      });
      const problems = await Promise.all([
        transfers({
          destination,
          clients: steady,
          grpcPlans: plans(10, 10, 3 * MiB, 6 * MiB),
          connectDoor,
          connectPlans: plans(6, 12, 1 * MiB, 2 * MiB),
        }),
        transfers({
          destination,
          clients: doomed,
          grpcPlans: plans(12, 11, 3 * MiB, 6 * MiB),
          allowFailure: true,
          label: 'reset',
        }),
      ]);
      await Promise.all(resets);
      stop();
      for (const c of steady) c.close();
      assertNoProblems(problems.flat());
    });
  });

  it('a frontend killed while the agent streams into it: the agent stays up, bounded, closes every endpoint, and serves a new frontend byte-exact', async () => {
    await withFleet({}, async ({ fleet, destination, agent }) => {
      const agentHealth = async () => {
        const metrics = (await fetchText(agent.healthPort, '/metrics')).body;
        const value = (name: string) =>
          Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(metrics)?.[1]);
        return {
          open: value('konnectivity_network_proxy_agent_open_endpoint_connections'),
          rss: value('process_resident_memory_bytes'),
        };
      };
      // A frontend of its own, to kill: 16 tunnels downloading 16 MiB each, with clients that barely read.
      const uds = fleet.socketPath();
      const victim = await fleet.spawnFrontend(uds);
      const clients = Array.from({ length: 4 }, () => new ProxyStreamClient(`unix:${uds}`));
      const stops = clients.map((c, i) => slowReader(c, 50 + i));
      const running = transfers({
        destination,
        clients,
        grpcPlans: plans(16, 13, 64 * KiB, 16 * MiB).map((plan) => ({ ...plan, download: 16 * MiB })),
        allowFailure: true,
        label: 'doomed',
      });
      await new Promise((r) => setTimeout(r, 700));
      victim.child.kill('SIGKILL');
      assertNoProblems(await running);
      for (const stop of stops) stop();
      for (const c of clients) c.close();
      assert.equal(agent.child.exitCode, null, 'the agent is still running');
      // No orphans: the agent closes its destination sockets (confirm/probe timeouts, <= 15 s).
      const deadline = Date.now() + 20_000;
      let health = await agentHealth();
      while (health.open !== 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 500));
        health = await agentHealth();
      }
      assert.equal(health.open, 0, 'every destination socket closed');
      assert.ok(health.rss < 400 * MiB, `agent RSS ${Math.round(health.rss / MiB)} MiB`);
      // A new frontend: the agent's pools hold no buffer still being written.
      const freshUds = fleet.socketPath();
      await fleet.spawnFrontend(freshUds);
      await assertFreshTunnelsExact(freshUds, destination, 14);
    });
  });
});
