import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { echoServer } from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { ProxyStreamClient, randomId } from '../helpers/proxy-client.js';

type Line = Record<string, unknown>;

describe('one grep tells a tunnel story', () => {
  const fleet = new Fleet();
  let frontendLogs: Line[];
  let agentLogs: Line[];
  let uds: string;

  before(async () => {
    await fleet.startNats();
    uds = fleet.socketPath();
    ({ logs: frontendLogs } = await fleet.spawnFrontend(uds, ['--server-id', 'fe-log']));
    ({ logs: agentLogs } = await fleet.spawnAgent(['--agent-id', 'ag-log']));
  });
  after(() => fleet.stop());

  it('logs the same tunnelId with every field on both sides, ending with bytes, duration and reason', async () => {
    const echo = await echoServer();
    const client = new ProxyStreamClient(`unix:${uds}`);
    const random = randomId();
    const dial = await eventually(async () => {
      const d = await client.dial(echo.address, random);
      return d.error === '' && d;
    }, 'dial');
    client.send(dial.connectID, Buffer.from('twelve bytes'));
    await client.waitBytes(dial.connectID, 12);
    client.closeRequest(dial.connectID);
    await client.waitClosed(dial.connectID);
    client.close();

    const open = await eventually(
      () => frontendLogs.find((l) => l.msg === 'tunnel open' && String(l.random) === random),
      'frontend tunnel open line',
    );
    const tunnelId = open.tunnelId as string;
    assert.match(tunnelId, /^[A-Za-z0-9_-]{22}$/);
    assert.equal(open.connectID, dial.connectID);
    assert.equal(open.frontendId, 'fe-log');
    assert.equal(open.agentId, 'ag-log');
    assert.equal(open.destination, echo.address);

    const story = (logs: Line[]) => logs.filter((l) => l.tunnelId === tunnelId);
    const feClosed = await eventually(
      () => story(frontendLogs).find((l) => l.msg === 'tunnel closed'),
      'frontend close line',
    );
    const agClosed = await eventually(
      () => story(agentLogs).find((l) => l.msg === 'tunnel closed'),
      'agent close line',
    );
    const agOpen = story(agentLogs).find((l) => l.msg === 'tunnel open');
    assert.ok(agOpen, 'the agent logs the open with the same tunnelId');
    assert.equal(agOpen.frontendId, 'fe-log');
    assert.equal(agOpen.agentId, 'ag-log');
    assert.equal(agOpen.destination, echo.address);
    for (const closed of [feClosed, agClosed]) {
      assert.equal(closed.reason, 'ok');
      assert.equal(typeof closed.durationMs, 'number');
    }
    assert.equal(feClosed.bytesOut, 12);
    assert.equal(feClosed.bytesIn, 12);
    assert.equal(agClosed.bytesIn, 12);
    assert.equal(agClosed.bytesOut, 12);
    assert.equal(feClosed.connectID, dial.connectID, 'the close line carries the connectID too');
    await echo.close();
  });
});
