/**
 * Breaker (break17): outages with real processes. An agent killed and
 * restarted under the same id; a frontend killed and restarted while the
 * agents stay.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

describe('breaker: outages', () => {
  const fleet = new Fleet();
  let echo: Destination;

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
  });
  after(async () => {
    await echo?.close();
    await fleet.stop();
  });

  for (const restart of [false, true]) {
    it(`a tunnel through an agent killed -9 ${restart ? 'and restarted at once under the same id' : '(not restarted)'} ends within 10 s`, async () => {
      const uds = fleet.socketPath();
      const fe = await fleet.spawnFrontend(uds, ['--server-id', `fe-r${restart}`]);
      const id = `agX${restart ? 'r' : 'n'}`;
      const agent = await fleet.spawnAgent(['--agent-id', id]);
      await eventually(async () => (await fetchText(fe.healthPort, '/readyz')).status === 200, 'ready');
      await new Promise((r) => setTimeout(r, 500));
      const client = new ProxyStreamClient(`unix:${uds}`);
      try {
        const dial = await client.dial(echo.address);
        assert.equal(dial.error, '');
        const payload = randomBytes(1000);
        await client.sendAll(dial.connectID, payload);
        await client.waitBytes(dial.connectID, 1000, 5000);
        agent.child.kill('SIGKILL');
        const killedAt = Date.now();
        if (restart) await fleet.spawnAgent(['--agent-id', id]);
        // The client speaks on its tunnel (a request it awaits an answer to).
        await new Promise((r) => setTimeout(r, 500));
        client.send(dial.connectID, Buffer.from('GET / HTTP/1.1\r\n\r\n'));
        let closedAfter = -1;
        let why = '';
        try {
          why = await client.waitClosed(dial.connectID, Number(process.env.BREAK_WAIT ?? 15_000));
          closedAfter = Date.now() - killedAt;
        } catch {
          closedAfter = -1;
        }
        console.log(
          `# restart=${restart}: tunnel closed ${closedAfter} ms after kill -9 (${why.slice(0, 80)}), bytes back ${client.bytesOf(dial.connectID)}`,
        );
        assert.ok(closedAfter >= 0 && closedAfter < 10_000, `closed after ${closedAfter} ms`);
      } finally {
        client.close();
        fe.child.kill('SIGKILL');
      }
    });
  }

  it('a frontend killed -9 and restarted while agents stay routes again at once', async () => {
    const uds = fleet.socketPath();
    await fleet.spawnAgent(['--agent-id', 'stay1']);
    await fleet.spawnAgent(['--agent-id', 'stay2']);
    const first = await fleet.spawnFrontend(uds, ['--server-id', 'feR']);
    await eventually(async () => (await fetchText(first.healthPort, '/readyz')).status === 200, 'ready');
    first.child.kill('SIGKILL');
    const t0 = Date.now();
    const second = await fleet.spawnFrontend(uds, ['--server-id', 'feR']);
    const readyMs = Date.now() - t0;
    let failures = 0;
    let firstOk = -1;
    const errors = new Set<string>();
    for (let i = 0; i < 30; i++) {
      const client = new ProxyStreamClient(`unix:${uds}`);
      const dial = await client.dial(echo.address);
      client.close();
      if (dial.error) {
        failures++;
        errors.add(dial.error.slice(0, 80));
      } else if (firstOk < 0) firstOk = Date.now() - t0;
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log(
      `# frontend restart: ready ${readyMs} ms, first ok dial at ${firstOk} ms, ${failures}/30 failed ${[...errors]}`,
    );
    second.child.kill('SIGKILL');
    assert.equal(failures, 0);
  });
});
