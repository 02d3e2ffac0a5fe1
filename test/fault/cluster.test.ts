import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type RunningAgent, startAgent } from '../../agent/agent.js';
import { silentLogger } from '../../broker/logging.js';
import { type LocalServer, startLocalCluster } from '../../broker/nats-server/local-server.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { type RunningFrontend, startFrontend } from '../../frontend/frontend.js';
import {
  type Destination,
  httpServer,
  randomBytesSeeded,
  sha256,
  shaServer,
} from '../helpers/destinations.js';
import { agentArgs, eventually, Fleet, frontendArgs } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const MiB = 1024 * 1024;

describe('a 3-node NATS cluster loses the node a frontend is connected to', () => {
  let servers: LocalServer[];
  let frontend: RunningFrontend;
  const agents: RunningAgent[] = [];
  const fleet = new Fleet(); // only for its temp dir
  let web: Destination;
  const uds = fleet.socketPath();

  before(async () => {
    servers = await startLocalCluster(3, {});
    const urls = servers.map((s) => s.url).join(',');
    const { config } = frontendConfig(frontendArgs(urls, uds, ['--heartbeat-interval', '500ms']), {});
    frontend = await startFrontend({ ...config, logger: silentLogger() });
    for (const id of ['ag-1', 'ag-2']) {
      const { config: ac } = agentConfig(
        agentArgs(urls, ['--agent-id', id, '--heartbeat-interval', '500ms']),
        {},
      );
      agents.push(await startAgent({ ...ac, logger: silentLogger() }));
    }
    web = await httpServer('web');
    await eventually(() => frontend.debugState().agentsTakingDials === 2, 'both agents known');
  });
  after(async () => {
    await frontend.stop({ immediate: true });
    await Promise.all(agents.map((a) => a.stop({ immediate: true })));
    await Promise.all(servers.map((s) => s.stop()));
    await web.close();
    await fleet.stop();
  });

  it('new dials succeed again within 2 s; a tunnel mid-transfer completes byte-exact or fails with an error', async () => {
    const client = new ProxyStreamClient(`unix:${uds}`);
    const warm = await client.dial(web.address);
    assert.equal(warm.error, '');
    // A long download in flight across the failure.
    const download = randomBytesSeeded(192 * MiB, 4);
    const big = await shaServer(0, download);
    const transfer = new ProxyStreamClient(`unix:${uds}`);
    const dial = await transfer.dial(big.address);
    assert.equal(dial.error, '');
    await transfer.waitBytes(dial.connectID, 2 * MiB);

    const connectedTo = frontend.nc.getServer();
    const victim = servers.find((s) => connectedTo.endsWith(`:${s.port}`));
    assert.ok(victim, `frontend is connected to ${connectedTo}`);
    victim.kill();
    const killedAt = Date.now();

    let recoveredAfter = -1;
    while (Date.now() - killedAt < 10_000) {
      const probe = new ProxyStreamClient(`unix:${uds}`);
      const d = await Promise.race([
        probe.dial(web.address),
        new Promise<{ error: string }>((r) => setTimeout(() => r({ error: 'slow' }), 500)),
      ]);
      probe.close();
      if (d.error === '') {
        recoveredAfter = Date.now() - killedAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(recoveredAfter >= 0 && recoveredAfter <= 2000, `dials work again after ${recoveredAfter} ms`);
    assert.notEqual(frontend.nc.getServer(), connectedTo, 'the frontend failed over to another node');

    const closeError = await transfer.waitClosed(dial.connectID, 60_000);
    const got = transfer.dataOf(dial.connectID);
    if (closeError === '') {
      assert.equal(got.length, 32 + download.length, 'a clean close means every byte arrived');
      assert.equal(sha256(got.subarray(32)), sha256(download), 'and in order');
    } else {
      assert.match(closeError, /KNATS_|stream ended/, `failed with a reason: ${closeError}`);
      assert.equal(
        sha256(got.subarray(32)),
        sha256(download.subarray(0, got.length - 32)),
        'what arrived before the failure is an exact prefix',
      );
    }
    transfer.close();
    client.close();
    await big.close();
  });
});
