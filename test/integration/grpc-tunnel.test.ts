import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  type Destination,
  echoServer,
  hangingPort,
  httpServer,
  refusedPort,
} from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient, randomId, T } from '../helpers/proxy-client.js';

describe('gRPC ProxyService over UDS', () => {
  const fleet = new Fleet();
  let uds: string;
  let web: Destination;
  let healthPort: number;

  before(async () => {
    await fleet.startNats();
    const fe = await fleet.frontend(['--backend-dial-timeout', '1s']);
    uds = fe.uds;
    healthPort = fe.healthPort;
    await fleet.agent(['--dial-timeout', '1s']);
    web = await httpServer('web');
    await eventually(async () => (await fetchText(healthPort, '/readyz')).status === 200, 'frontend ready');
  });
  after(async () => {
    await web.close();
    await fleet.stop();
  });

  it('does what kube-apiserver does: DIAL_REQ, DIAL_RSP, HTTP GET over DATA, CLOSE_REQ, CLOSE_RSP', async () => {
    const client = new ProxyStreamClient(`unix:${uds}`);
    const random = randomId();
    const dial = await client.dial(web.address, random);
    assert.equal(dial.error, '');
    assert.ok(dial.connectID > 0, 'connectID is non-zero');
    const rsp = client.packets.find((p) => p.type === T.DIAL_RSP)!;
    assert.equal(rsp.dialResponse!.random, random, 'DIAL_RSP echoes the 64-bit random exactly');
    client.send(
      dial.connectID,
      Buffer.from('GET /apis HTTP/1.1\r\nHost: web\r\nConnection: keep-alive\r\n\r\n'),
    );
    await eventually(() => client.dataOf(dial.connectID).toString().includes('web /apis'), 'HTTP response');
    assert.match(client.dataOf(dial.connectID).toString(), /^HTTP\/1\.1 200 OK/);
    client.closeRequest(dial.connectID);
    assert.equal(await client.waitClosed(dial.connectID), '');
    client.close();
  });

  it('carries 3 dials on one stream to different destinations without mixing data', async () => {
    const dests = await Promise.all([httpServer('alpha'), httpServer('beta'), httpServer('gamma')]);
    const client = new ProxyStreamClient(`unix:${uds}`);
    const dials = await Promise.all(dests.map((d) => client.dial(d.address)));
    const ids = dials.map((d) => d.connectID);
    assert.equal(new Set(ids).size, 3, 'connectIDs are unique per stream');
    for (const [i, d] of dials.entries())
      client.send(d.connectID, Buffer.from(`GET /p${i} HTTP/1.0\r\n\r\n`));
    const tags = ['alpha', 'beta', 'gamma'];
    await Promise.all(dials.map((d) => client.waitClosed(d.connectID)));
    dials.forEach((d, i) => {
      const body = client.dataOf(d.connectID).toString();
      assert.ok(body.endsWith(`${tags[i]} /p${i}`), `tunnel ${i} got its own response: ${body}`);
    });
    client.close();
    await Promise.all(dests.map((d) => d.close()));
  });

  it('answers "No agent available" at once when no agent listens on the prefix', async () => {
    const lonely = await fleet.frontend(['--subject-prefix', 'empty']);
    const client = new ProxyStreamClient(`unix:${lonely.uds}`);
    await client.dial(web.address); // warm the HTTP/2 connection
    const started = process.hrtime.bigint();
    const dial = await client.dial(web.address);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    assert.equal(dial.error, 'No agent available');
    assert.ok(ms < 200, `no-agent answer took ${ms.toFixed(1)} ms`);
    client.close();
  });

  it('maps destination failures to DIAL_RSP errors with a reason', async () => {
    const client = new ProxyStreamClient(`unix:${uds}`);
    const refused = await client.dial(`127.0.0.1:${await refusedPort()}`);
    assert.match(refused.error, /KNATS_DIAL_REFUSED.*refused/);
    // The limited broadcast address has no TCP route: the kernel answers ENETUNREACH, nothing leaves the host.
    const unroutable = await client.dial('255.255.255.255:80');
    assert.match(unroutable.error, /KNATS_DIAL_UNREACHABLE.*unreachable/);
    const badPort = await client.dial('127.0.0.1:0');
    assert.match(badPort.error, /KNATS_BAD_ADDRESS.*port/);
    const noPort = await client.dial('127.0.0.1');
    assert.match(noPort.error, /KNATS_BAD_ADDRESS.*missing port/);
    const dns = await client.dial('no-such-host.invalid:80');
    assert.match(dns.error, /KNATS_DIAL_DNS/);
    client.close();
  });

  it('times out a dial that hangs with backend_dial_timeout', async () => {
    const hanging = await hangingPort();
    const client = new ProxyStreamClient(`unix:${uds}`);
    const dial = await client.dial(`127.0.0.1:${hanging.port}`);
    assert.match(dial.error, /KNATS_DIAL_TIMEOUT.*timeout/);
    assert.ok(dial.ms >= 900 && dial.ms < 3000, `timed out after ${dial.ms} ms with a 1s dial timeout`);
    client.close();
    hanging.close();
  });

  it('closes what the agent opened when the client sends DIAL_CLS before DIAL_RSP', async () => {
    const echo = await echoServer();
    const client = new ProxyStreamClient(`unix:${uds}`);
    for (let i = 0; i < 5; i++) {
      const random = randomId();
      void client.sendDial(echo.address, random);
      client.dialClose(random);
    }
    const started = Date.now();
    // The agent may have connected before the cancel reached it; then the frontend tells it to close.
    await eventually(
      () => echo.sockets.size === 0 && fleet.agents[0]!.debugState().sockets === 0,
      'agent sockets closed',
      3000,
    );
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(echo.sockets.size, 0, `no socket left at the destination (${Date.now() - started} ms)`);
    assert.equal(fleet.agents[0]!.debugState().tunnels, 0, 'no tunnel left on the agent');
    assert.ok(
      !client.packets.some((p) => p.type === 1 && p.dialResponse!.error === ''),
      'no successful DIAL_RSP for a cancelled dial',
    );
    client.close();
    await echo.close();
  });

  it('closes the agent side when the client cancels the whole stream', async () => {
    const echo = await echoServer();
    const client = new ProxyStreamClient(`unix:${uds}`);
    const dial = await client.dial(echo.address);
    client.send(dial.connectID, Buffer.from('ping'));
    await client.waitBytes(dial.connectID, 4);
    assert.equal(echo.sockets.size, 1);
    client.close();
    await eventually(() => echo.sockets.size === 0, 'destination socket closed after stream cancel');
    await echo.close();
  });

  it('answers DATA for an unknown connectID with a CLOSE_RSP error and keeps the stream', async () => {
    const client = new ProxyStreamClient(`unix:${uds}`);
    client.send(999, Buffer.from('x'));
    assert.match(await client.waitClosed(999), /unknown connectID 999/);
    const dial = await client.dial(web.address);
    assert.equal(dial.error, '');
    client.close();
  });
});
