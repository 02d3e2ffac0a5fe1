import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { defaultCreditSettings } from '../../broker/tunnel/credit.js';
import {
  blackholeServer,
  echoServer,
  randomBytesSeeded,
  sha256,
  shaServer,
} from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const MiB = 1024 * 1024;

describe('transfers through one frontend and one agent', () => {
  const fleet = new Fleet();
  let uds: string;

  before(async () => {
    await fleet.startNats();
    uds = (await fleet.frontend()).uds;
    await fleet.agent();
  });
  after(() => fleet.stop());

  const frontendState = () => fleet.frontends[0]!.debugState() as Record<string, unknown>;
  const agentState = () => fleet.agents[0]!.debugState() as Record<string, unknown>;

  it('moves 64 MiB up and 64 MiB down through one tunnel byte-exact', async (t) => {
    const up = randomBytesSeeded(64 * MiB, 7);
    const down = randomBytesSeeded(64 * MiB, 11);
    const dest = await shaServer(up.length, down);
    const client = new ProxyStreamClient(`unix:${uds}`);
    const dial = await client.dial(dest.address);
    assert.equal(dial.error, '');
    const started = process.hrtime.bigint();
    await client.sendAll(dial.connectID, up);
    await client.waitBytes(dial.connectID, 32 + down.length, 120_000);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const got = client.dataOf(dial.connectID);
    assert.equal(got.subarray(0, 32).toString('hex'), sha256(up), 'destination saw the exact upload');
    assert.equal(sha256(got.subarray(32)), sha256(down), 'client got the exact download');
    assert.equal(
      await client.waitClosed(dial.connectID),
      '',
      'destination close arrives as a clean CLOSE_RSP',
    );
    t.diagnostic(
      `128 MiB through the tunnel in ${seconds.toFixed(2)} s: ${((128 * MiB) / 1e6 / seconds).toFixed(1)} MB/s`,
    );
    client.close();
    await dest.close();
  });

  it('runs 200 concurrent tunnels of 1 MiB each byte-exact and leaves nothing behind', async () => {
    const echo = await echoServer();
    const baselineTimers = (frontendState().activeHandles as Record<string, number>).Timeout ?? 0;
    const clients = Array.from({ length: 200 }, () => new ProxyStreamClient(`unix:${uds}`));
    await Promise.all(
      clients.map(async (client, i) => {
        const payload = randomBytesSeeded(MiB, i + 1);
        const dial = await client.dial(echo.address);
        assert.equal(dial.error, '', `dial ${i}`);
        await client.sendAll(dial.connectID, payload);
        await client.waitBytes(dial.connectID, MiB, 120_000);
        assert.equal(sha256(client.dataOf(dial.connectID)), sha256(payload), `tunnel ${i} echoed exactly`);
        client.closeRequest(dial.connectID);
        assert.equal(await client.waitClosed(dial.connectID), '');
        client.close();
      }),
    );
    await eventually(() => echo.sockets.size === 0, 'destination sockets closed');
    const fe = await eventually(() => {
      const s = frontendState();
      return s.tunnels === 0 && s.grpcStreams === 0 && s.pendingDials === 0 && s;
    }, 'frontend back to zero');
    const ag = await eventually(() => {
      const s = agentState();
      return s.tunnels === 0 && s.sockets === 0 && s.pendingDials === 0 && s.unconfirmedTunnels === 0 && s;
    }, 'agent back to zero');
    assert.equal(fe.receiveBudgetInUse, 0, 'frontend credit all returned');
    assert.equal(ag.receiveBudgetInUse, 0, 'agent credit all returned');
    assert.equal(fe.blockedTunnels, 0);
    await eventually(
      () => ((frontendState().activeHandles as Record<string, number>).Timeout ?? 0) <= baselineTimers,
      'no timers left behind',
    );
    await echo.close();
  });

  it('keeps tunnel B flowing while tunnel A is stuck, and bounds what A buffers', async () => {
    const window = defaultCreditSettings.window;
    const stuck = await blackholeServer();
    const a = new ProxyStreamClient(`unix:${uds}`);
    const dialA = await a.dial(stuck.address);
    assert.equal(dialA.error, '');
    // A writes far more than any buffer can hold; its destination never reads.
    const flood = randomBytesSeeded(64 * MiB, 3);
    void a.sendAll(dialA.connectID, flood).catch(() => {});
    let maxSeen = { feIn: 0, feOut: 0, agIn: 0, agOut: 0 };
    const sample = setInterval(() => {
      const fe = frontendState().maxBuffered as { in: number; out: number };
      const ag = agentState().maxBuffered as { in: number; out: number };
      maxSeen = {
        feIn: Math.max(maxSeen.feIn, fe.in),
        feOut: Math.max(maxSeen.feOut, fe.out),
        agIn: Math.max(maxSeen.agIn, ag.in),
        agOut: Math.max(maxSeen.agOut, ag.out),
      };
    }, 5);
    await new Promise((r) => setTimeout(r, 500));
    const up = randomBytesSeeded(32 * MiB, 5);
    const down = randomBytesSeeded(32 * MiB, 9);
    const dest = await shaServer(up.length, down);
    const b = new ProxyStreamClient(`unix:${uds}`);
    const dialB = await b.dial(dest.address);
    await b.sendAll(dialB.connectID, up);
    await b.waitBytes(dialB.connectID, 32 + down.length, 120_000);
    const got = b.dataOf(dialB.connectID);
    assert.equal(got.subarray(0, 32).toString('hex'), sha256(up));
    assert.equal(createHash('sha256').update(got.subarray(32)).digest('hex'), sha256(down));
    clearInterval(sample);
    assert.ok(maxSeen.agIn <= window, `agent buffered ${maxSeen.agIn} bytes of A, window ${window}`);
    assert.ok(
      maxSeen.feIn <= window,
      `frontend buffered ${maxSeen.feIn} bytes from the bus, window ${window}`,
    );
    assert.ok(maxSeen.feOut <= window, `frontend held ${maxSeen.feOut} bytes waiting for credit`);
    assert.ok(maxSeen.agIn > 0, 'A really was stuck with bytes in flight');
    a.close();
    b.close();
    await eventually(() => frontendState().tunnels === 0 && agentState().sockets === 0, 'both tunnels gone');
    await stuck.close();
    await dest.close();
  });
});
