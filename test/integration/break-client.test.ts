/**
 * Breaker (break17): a hostile client holding only door access.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Destination, echoServer, hangingPort } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

describe('breaker: a hostile client', () => {
  const fleet = new Fleet();
  let echo: Destination;
  let hang: { port: number; close(): void };

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
    hang = await hangingPort();
  });
  after(async () => {
    hang?.close();
    await echo?.close();
    await fleet.stop();
  });

  // SECURITY.md: a client with door access can take the frontend's whole pending-dial limit with dials to a
  // destination that never answers; the others are then refused at once and visibly, and served again as
  // soon as those dials time out. Per-client shares need an identity per client (tenants), not a door.
  it('one client pinning every pending dial: the others are refused at once with a code, then served again', async () => {
    const uds = fleet.socketPath();
    const fe = await fleet.spawnFrontend(uds, ['--server-id', 'fePin', '--backend-dial-timeout', '5s']);
    await fleet.spawnAgent(['--agent-id', 'pinA']);
    await fleet.spawnAgent(['--agent-id', 'pinB']);
    await eventually(async () => (await fetchText(fe.healthPort, '/readyz')).status === 200, 'ready');
    const attackers = Array.from({ length: 17 }, () => new ProxyStreamClient(`unix:${uds}`));
    const victim = new ProxyStreamClient(`unix:${uds}`);
    try {
      const pinned = attackers.flatMap((c) =>
        Array.from({ length: 64 }, () => c.dial(`127.0.0.1:${hang.port}`)),
      );
      await new Promise((r) => setTimeout(r, 1500));
      const results: string[] = [];
      for (let i = 0; i < 10; i++) {
        const dial = await victim.dial(echo.address);
        results.push(dial.error ? dial.error.slice(0, 70) : 'ok');
        if (!dial.error) victim.closeRequest(dial.connectID);
      }
      const refused = results.filter((r) => r !== 'ok').length;
      console.log(`# victim dials while one client pins 1,024 dials: ${refused}/10 refused: ${results[0]}`);
      for (const r of results)
        assert.match(r, /^(ok|KNATS_TOO_MANY_PENDING_DIALS)/, 'refused with its own code');
      const done = await Promise.all(pinned);
      const kinds = new Map<string, number>();
      for (const d of done) kinds.set(d.error.slice(0, 50), (kinds.get(d.error.slice(0, 50)) ?? 0) + 1);
      console.log(
        `# pinned dials ended: ${JSON.stringify([...kinds])}, slowest ${Math.max(...done.map((d) => d.ms))} ms`,
      );
      // Served again once the pinned dials ended (with the agents' own dial timeout).
      const after = await victim.dial(echo.address);
      assert.equal(after.error, '', 'the victim is served again');
    } finally {
      for (const c of attackers) c.close();
      victim.close();
      fe.child.kill('SIGKILL');
    }
  });
});
