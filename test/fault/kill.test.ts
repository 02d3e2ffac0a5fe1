import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { echoServer, randomBytesSeeded, shaServer } from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const MiB = 1024 * 1024;

describe('a peer killed with SIGKILL', () => {
  const fleet = new Fleet();
  before(() => fleet.startNats());
  after(() => fleet.stop());

  it('agent killed mid-transfer: the client stream gets CLOSE_RSP within 15 s', async () => {
    const fe = await fleet.frontend();
    const { child } = await fleet.spawnAgent(['--agent-id', 'doomed']);
    // A destination that streams a lot, slowly enough to be mid-transfer when the agent dies.
    const dest = await shaServer(0, randomBytesSeeded(256 * MiB, 2));
    const client = new ProxyStreamClient(`unix:${fe.uds}`);
    const dial = await client.dial(dest.address);
    assert.equal(dial.error, '');
    await client.waitBytes(dial.connectID, 4 * MiB);
    child.kill('SIGKILL');
    const killedAt = Date.now();
    const closeError = await client.waitClosed(dial.connectID, 15_000);
    const ms = Date.now() - killedAt;
    assert.match(closeError, /KNATS_PEER_GONE|stream ended/, `close reason: ${closeError}`);
    assert.ok(ms <= 15_000, `closed ${ms} ms after the kill`);
    assert.ok(client.bytesOf(dial.connectID) < 32 + 256 * MiB, 'the transfer was cut, not completed');
    client.close();
    await eventually(() => fe.debugState().tunnels === 0, 'frontend tunnel map empty');
    await dest.close();
  });

  it('frontend killed: the agent closes its destination socket within 15 s', async () => {
    const uds = fleet.socketPath();
    const { child } = await fleet.spawnFrontend(uds);
    const agent = await fleet.agent();
    const echo = await echoServer();
    const client = new ProxyStreamClient(`unix:${uds}`);
    // The agent may not be known to the freshly started frontend for a moment; retry the dial.
    const dial = await eventually(async () => {
      const d = await client.dial(echo.address);
      return d.error === '' && d;
    }, 'dial through the child frontend');
    client.send(dial.connectID, Buffer.from('hello'));
    await client.waitBytes(dial.connectID, 5);
    assert.equal(echo.sockets.size, 1);
    child.kill('SIGKILL');
    const killedAt = Date.now();
    await eventually(() => echo.sockets.size === 0, 'destination socket closed by the agent', 15_000);
    const ms = Date.now() - killedAt;
    assert.ok(ms <= 15_000, `agent closed the destination ${ms} ms after the frontend died`);
    await eventually(
      () => agent.debugState().tunnels === 0 && agent.debugState().sockets === 0,
      'agent clean',
    );
    client.close();
    await echo.close();
  });
});
