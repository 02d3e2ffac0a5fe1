/**
 * A hostile agent that owns a tunnel floods its frontend with frames (trust
 * issue, item 6): credit counts bytes, so DATA frames without bytes, or with
 * one byte each, toward a client that stopped reading must not cost the
 * frontend a queued message per frame. Real nats-server with the
 * configuration `knats broker config` prints, real frontend processes (one
 * per door), a real agent for the victim tunnels, and an attacker holding
 * only agA's own credentials that answers the dials addressed to it by name.
 *
 * For each door and each flood: the frontend's RSS stays within a bound
 * (before/under/after reported), the worst event-loop lag (prom-client's
 * nodejs_eventloop_lag_max_seconds, scraped every 200 ms through the flood
 * and the teardown) stays below the 2 s heartbeat interval, and a victim
 * tunnel beside it stays byte-exact.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLocalServer } from '../../broker/nats-server/local-server.js';
import {
  type BusDialRequest,
  dialRequestCodec,
  dialResponseCodec,
  PROTOCOL_VERSION,
} from '../../broker/wire/bus-messages.js';
import { decodeFrame, encodeData, FrameType } from '../../broker/wire/codec.js';
import { claimsToken } from '../../broker/wire/identifiers.js';
import { Subjects } from '../../broker/wire/subjects.js';
import { connectRequest, DoorClient } from '../helpers/connect-client.js';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { fakeHeartbeat } from '../helpers/heartbeats.js';
import { brokerConfigCli, connectWith, type ProbedConnection } from '../helpers/nats-permissions.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const subjects = new Subjects('knats');
/** The frontends' tunnel window: the 1-byte flood is one frame per byte of it. */
const WINDOW = 1024 * 1024;
const EMPTY_FRAMES = 300_000;
const HEARTBEAT_MS = 2000;
/** Frontend growth allowed under a flood: the window each way, NATS buffers, heap slack. */
const MAX_GROWTH_MIB = 64;

function rssMiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m);
  return Number(line?.[1] ?? 0) / 1024;
}

/** Samples a process's event-loop lag (its own monitor, reset at each scrape) and RSS until stopped. */
function probe(pid: number, healthPort: number) {
  let maxLagS = 0;
  let maxScrapeMs = 0;
  let maxRss = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const started = Date.now();
      const { body } = await fetchText(healthPort, '/metrics');
      maxScrapeMs = Math.max(maxScrapeMs, Date.now() - started);
      const lag = Number(body.match(/^nodejs_eventloop_lag_max_seconds (\S+)$/m)?.[1] ?? 0);
      maxLagS = Math.max(maxLagS, lag);
      maxRss = Math.max(maxRss, rssMiB(pid));
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return { maxLagS, maxScrapeMs, maxRss };
    },
  };
}

describe('attacker suite: a tunnel-owning agent floods frames at a client that stopped reading', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-flood-'));
  const seed = (name: string) => join(dir, 'state', 'knats', `${name}.nk`);
  const fleet = new Fleet();
  const grpcUds = fleet.socketPath();
  const connectUds = fleet.socketPath();
  let echo: Destination;
  let grpcFrontend: { child: ChildProcess; healthPort: number };
  let connectFrontend: { child: ChildProcess; healthPort: number };
  let agent: { child: ChildProcess; healthPort: number };
  let attacker: ProbedConnection;
  let beat: NodeJS.Timeout;
  /** The attacker's answer to the next dial addressed to agA. */
  let nextDial: ((request: BusDialRequest) => void) | undefined;
  /** Grants the frontend sent the attacker, by tunnel id. */
  const grants = new Map<string, number>();

  const heartbeat = () =>
    attacker.publish(
      subjects.presence('agent', 'agA', claimsToken('host=a.example')),
      fakeHeartbeat({ identifiers: 'host=a.example', openTunnels: 1, heartbeatIntervalMs: 1000 }),
    );

  before(async () => {
    const config = brokerConfigCli(
      [
        '--agent',
        'agA?host=a.example',
        '--agent',
        'agB?host=b.example',
        '--frontend',
        'fe1',
        '--frontend',
        'fe2',
        '--state-dir',
        'state',
      ],
      dir,
    );
    fleet.nats = await startLocalServer({ extraConfig: config });
    echo = await echoServer();
    const frontendFlags = ['--proxy-strategies', 'destHost,default', '--tunnel-window', String(WINDOW)];
    grpcFrontend = await fleet.spawnFrontend(grpcUds, [
      '--server-id',
      'fe1',
      '--nats-nkey',
      seed('frontend-fe1'),
      ...frontendFlags,
    ]);
    connectFrontend = await fleet.spawnFrontend(connectUds, [
      '--server-id',
      'fe2',
      '--nats-nkey',
      seed('frontend-fe2'),
      '--mode',
      'http-connect',
      ...frontendFlags,
    ]);
    agent = await fleet.spawnAgent([
      '--agent-id',
      'agB',
      '--nats-nkey',
      seed('agent-agB'),
      '--agent-identifiers',
      'host=b.example',
    ]);
    attacker = await connectWith({ servers: [fleet.nats.url], nkeyFile: seed('agent-agA') }, 'attacker');
    attacker.subscribe(subjects.dialAgent('agA'), {
      callback: (_err, msg) => {
        const request = dialRequestCodec.decode(msg.data);
        // Frontends offer agA default dials too (the victims'): left unanswered, they move on to agB.
        if (!request.address.startsWith('a.example:')) return;
        msg.respond(
          dialResponseCodec.encode({
            protocolVersion: PROTOCOL_VERSION,
            tunnelId: request.tunnelId,
            agentId: 'agA',
            errorCode: '',
            errorMessage: '',
            initialWindow: 1 << 20,
          }),
        );
        grants.set(request.tunnelId, request.initialWindow);
        nextDial?.(request);
      },
    });
    // The frontends' grants (WINDOW) to the attacker's end of its tunnels.
    attacker.subscribe(subjects.agentTunnels('agA'), {
      callback: (_err, msg) => {
        const frame = decodeFrame(Buffer.from(msg.data));
        const tunnelId = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
        if (frame?.type === FrameType.Window && frame.limit > (grants.get(tunnelId) ?? 0))
          grants.set(tunnelId, frame.limit);
      },
    });
    heartbeat();
    beat = setInterval(heartbeat, 1000);
    for (const frontend of [grpcFrontend, connectFrontend]) {
      await eventually(
        async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200,
        'frontend ready with agB known',
      );
    }
    // destHost dials for a.example go to agA by name once its heartbeat is known.
    await new Promise((r) => setTimeout(r, 500));
  });

  after(async () => {
    clearInterval(beat);
    await attacker?.close();
    await echo?.close();
    await fleet.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Waits for the next dial the attacker answers. */
  const dialed = () => new Promise<BusDialRequest>((resolve) => (nextDial = resolve));

  /** Floods `tunnelId` at its frontend: EMPTY_FRAMES empty DATA frames, or 1-byte frames up to every grant. */
  async function flood(request: BusDialRequest, kind: 'empty' | 'one-byte'): Promise<Buffer> {
    const subject = subjects.frontendTunnel(request.frontendId, request.tunnelId);
    if (kind === 'empty') {
      for (let seq = 1; seq <= EMPTY_FRAMES; seq++) {
        attacker.publish(subject, encodeData(seq, Buffer.alloc(0)));
        if (seq % 10_000 === 0) await attacker.flush();
      }
      await attacker.flush();
      return Buffer.alloc(0);
    }
    let sent = 0;
    let idleSince = Date.now();
    // Until no grant came for a second: the client reads nothing, so the frontend stops granting.
    while (Date.now() - idleSince < 1000) {
      const limit = grants.get(request.tunnelId) ?? 0;
      if (sent >= limit) {
        await attacker.flush();
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      const end = Math.min(limit, sent + 10_000);
      for (; sent < end; sent++) attacker.publish(subject, encodeData(sent + 1, Buffer.from([sent & 0xff])));
      await attacker.flush();
      idleSince = Date.now();
    }
    const pattern = Buffer.alloc(sent);
    for (let i = 0; i < sent; i++) pattern[i] = i & 0xff;
    return pattern;
  }

  async function grpcVictimRoundTrip(what: string): Promise<ProxyStreamClient> {
    const client = new ProxyStreamClient(`unix:${grpcUds}`);
    const dial = await client.dial(echo.address);
    assert.equal(dial.error, '', `victim dial after ${what}`);
    const payload = randomBytes(48 * 1024);
    await client.sendAll(dial.connectID, payload);
    await client.waitBytes(dial.connectID, payload.length, 10_000);
    assert.ok(client.dataOf(dial.connectID).equals(payload), `victim byte-exact: ${what}`);
    return client;
  }

  async function connectVictimRoundTrip(what: string): Promise<DoorClient> {
    const client = await DoorClient.open({ path: connectUds });
    await client.write(connectRequest(echo.address));
    assert.equal((await client.readHead()).status, 200, `victim CONNECT after ${what}`);
    const payload = randomBytes(48 * 1024);
    await client.write(payload);
    assert.ok((await client.readBytes(payload.length, 10_000)).equals(payload), `victim byte-exact: ${what}`);
    return client;
  }

  const report = (what: string, figures: Record<string, number>) =>
    console.log(
      `# ${what}: ${Object.entries(figures)
        .map(([k, v]) => `${k}=${Number.isInteger(v) ? v : v.toFixed(2)}`)
        .join(' ')}`,
    );

  for (const kind of ['empty', 'one-byte'] as const) {
    it(`gRPC door: ${kind} DATA frames at a client that stopped reading stay bounded`, async () => {
      const { child, healthPort } = grpcFrontend;
      const victim = await grpcVictimRoundTrip('nothing yet');
      const rssBefore = rssMiB(child.pid!);
      // A small HTTP/2 window: the client's stop pushes back on the frontend at once.
      const client = new ProxyStreamClient(`unix:${grpcUds}`, undefined, {
        'grpc-node.flow_control_window': 65_535,
      });
      const request = dialed();
      const dial = await client.dial('a.example:443');
      assert.equal(dial.error, '', 'the attacker answered the dial');
      const tunnel = await request;
      client.call.pause();
      const sampler = probe(child.pid!, healthPort);
      const sent = await flood(tunnel, kind);
      await new Promise((r) => setTimeout(r, 1000));
      const rssUnder = rssMiB(child.pid!);
      assert.equal(child.exitCode, null, 'frontend up');
      const victim2 = await grpcVictimRoundTrip(`${kind} flood`);
      assert.ok(
        rssUnder - rssBefore < MAX_GROWTH_MIB,
        `frontend RSS grew ${(rssUnder - rssBefore).toFixed(0)} MiB under the flood`,
      );
      // Teardown: the client reads again; what the flood left must be exactly what was sent, or an error.
      client.call.resume();
      if (kind === 'empty') {
        assert.match(await client.waitClosed(dial.connectID, 30_000), /KNATS_MALFORMED_FRAME/);
      } else {
        await client.waitBytes(dial.connectID, sent.length, 60_000);
        assert.ok(client.dataOf(dial.connectID).equals(sent), 'the 1-byte frames arrive byte-exact');
      }
      client.close();
      await new Promise((r) => setTimeout(r, 1500));
      const figures = await sampler.stop();
      const rssAfter = rssMiB(child.pid!);
      report(`grpc ${kind}`, {
        frames: kind === 'empty' ? EMPTY_FRAMES : sent.length,
        rssBeforeMiB: rssBefore,
        rssUnderMiB: Math.max(rssUnder, figures.maxRss),
        rssAfterMiB: rssAfter,
        maxEventLoopLagS: figures.maxLagS,
        maxScrapeMs: figures.maxScrapeMs,
      });
      assert.ok(figures.maxLagS * 1000 < HEARTBEAT_MS, `event loop lagged ${figures.maxLagS} s`);
      await victim.sendAll(1, Buffer.from('x'));
      await victim.waitBytes(1, 48 * 1024 + 1, 10_000);
      victim.close();
      victim2.close();
      assert.equal((await fetchText(healthPort, '/readyz')).status, 200);
      assert.equal(agent.child.exitCode, null);
    });

    it(`CONNECT door: ${kind} DATA frames at a client that stopped reading stay bounded`, async () => {
      const { child, healthPort } = connectFrontend;
      const victim = await connectVictimRoundTrip('nothing yet');
      const rssBefore = rssMiB(child.pid!);
      const client = await DoorClient.open({ path: connectUds });
      const request = dialed();
      await client.write(connectRequest('a.example:443'));
      assert.equal((await client.readHead()).status, 200, 'the attacker answered the dial');
      const tunnel = await request;
      client.socket.pause();
      const sampler = probe(child.pid!, healthPort);
      const sent = await flood(tunnel, kind);
      await new Promise((r) => setTimeout(r, 1000));
      const rssUnder = rssMiB(child.pid!);
      assert.equal(child.exitCode, null, 'frontend up');
      const victim2 = await connectVictimRoundTrip(`${kind} flood`);
      assert.ok(
        rssUnder - rssBefore < MAX_GROWTH_MIB,
        `frontend RSS grew ${(rssUnder - rssBefore).toFixed(0)} MiB under the flood`,
      );
      client.socket.resume();
      if (kind === 'empty') {
        // Aborted: over a Unix socket a reset is a close, with nothing delivered.
        const got = await client.readToEnd(30_000);
        assert.equal(got.length, 0);
      } else {
        assert.ok((await client.readBytes(sent.length, 60_000)).equals(sent), '1-byte frames byte-exact');
      }
      client.close();
      await new Promise((r) => setTimeout(r, 1500));
      const figures = await sampler.stop();
      const rssAfter = rssMiB(child.pid!);
      report(`connect ${kind}`, {
        frames: kind === 'empty' ? EMPTY_FRAMES : sent.length,
        rssBeforeMiB: rssBefore,
        rssUnderMiB: Math.max(rssUnder, figures.maxRss),
        rssAfterMiB: rssAfter,
        maxEventLoopLagS: figures.maxLagS,
        maxScrapeMs: figures.maxScrapeMs,
      });
      assert.ok(figures.maxLagS * 1000 < HEARTBEAT_MS, `event loop lagged ${figures.maxLagS} s`);
      const more = randomBytes(1024);
      await victim.write(more);
      assert.ok((await victim.readBytes(more.length, 10_000)).equals(more));
      victim.close();
      victim2.close();
      assert.equal((await fetchText(healthPort, '/readyz')).status, 200);
      assert.equal(agent.child.exitCode, null);
    });
  }
});
