import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { type Destination, httpServer } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const beat = ['--heartbeat-interval', '500ms'];

interface Replica {
  child: ChildProcess;
  healthPort: number;
}

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null
    ? Promise.resolve(child.exitCode)
    : new Promise((r) => child.once('exit', r));
}

describe('rolling update with SIGTERM: 2 frontends, 2 agents, 20 looping clients', () => {
  const fleet = new Fleet();
  let web: Destination;
  const sockets: string[] = [];
  const frontends: Replica[] = [];
  const agents: Replica[] = [];

  const startFrontend = (i: number) =>
    fleet.spawnFrontend(sockets[i]!, [
      '--server-id',
      `fe-${i}-${Date.now()}`,
      '--graceful-shutdown-timeout',
      '5s',
      ...beat,
    ]);
  const startAgent = (i: number) =>
    fleet.spawnAgent(['--agent-id', `ag-${i}-${Date.now()}`, '--graceful-shutdown-timeout', '5s', ...beat]);

  before(async () => {
    await fleet.startNats();
    web = await httpServer('web');
    sockets.push(fleet.socketPath(), fleet.socketPath());
    agents.push(await startAgent(0), await startAgent(1));
    frontends.push(await startFrontend(0), await startFrontend(1));
    for (const fe of frontends) {
      await eventually(
        async () => (await fetchText(fe.healthPort, '/readyz')).status === 200,
        'frontend ready',
      );
    }
  });
  after(async () => {
    await web.close();
    await fleet.stop();
  });

  it('serves every request while each agent, then each frontend, restarts', async () => {
    // The load balancer's view: frontends in rotation (as Kubernetes removes an endpoint before SIGTERM).
    const inRotation = new Set([0, 1]);
    let next = 0;
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    const loop = async (id: number) => {
      while (!stop) {
        const candidates = [...inRotation];
        const fe = candidates[next++ % candidates.length]!;
        const client = new ProxyStreamClient(`unix:${sockets[fe]}`);
        try {
          const dial = await client.dial(web.address);
          if (dial.error) throw new Error(`dial via frontend ${fe}: ${dial.error}`);
          client.send(dial.connectID, Buffer.from(`GET /c${id} HTTP/1.0\r\n\r\n`));
          const closeError = await client.waitClosed(dial.connectID, 10_000);
          const body = client.dataOf(dial.connectID).toString();
          if (closeError !== '' || !body.endsWith(`web /c${id}`))
            throw new Error(`bad response via ${fe}: ${closeError} ${body}`);
          ok++;
        } catch (err) {
          failures.push((err as Error).message);
        } finally {
          client.close();
        }
      }
    };
    const loops = Array.from({ length: 20 }, (_, i) => loop(i));
    const settle = () => new Promise((r) => setTimeout(r, 700));
    await settle();
    for (let i = 0; i < 2; i++) {
      const old = agents[i]!;
      old.child.kill('SIGTERM');
      assert.equal(await exited(old.child), 0, `agent ${i} exits cleanly after draining`);
      agents[i] = await startAgent(i);
      await settle();
    }
    for (let i = 0; i < 2; i++) {
      inRotation.delete(i);
      await new Promise((r) => setTimeout(r, 200)); // endpoint removal propagates before SIGTERM
      const old = frontends[i]!;
      old.child.kill('SIGTERM');
      assert.equal(await exited(old.child), 0, `frontend ${i} exits cleanly after draining`);
      frontends[i] = await startFrontend(i);
      await eventually(
        async () => (await fetchText(frontends[i]!.healthPort, '/readyz')).status === 200,
        'new frontend ready',
      );
      inRotation.add(i);
      await settle();
    }
    stop = true;
    await Promise.all(loops);
    assert.deepEqual(
      failures.slice(0, 5),
      [],
      `${failures.length} failed requests of ${ok + failures.length}`,
    );
    assert.ok(ok > 100, `${ok} requests served`);
  });
});
