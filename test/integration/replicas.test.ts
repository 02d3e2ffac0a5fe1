import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Destination, httpServer } from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

describe('two frontends and two agents on one nats-server', () => {
  const fleet = new Fleet();
  let web: Destination;
  before(async () => {
    await fleet.startNats();
    await fleet.frontend(['--server-id', 'fe-a']);
    await fleet.frontend(['--server-id', 'fe-b']);
    await fleet.agent(['--agent-id', 'ag-1']);
    await fleet.agent(['--agent-id', 'ag-2']);
    web = await httpServer('web');
  });
  after(async () => {
    await web.close();
    await fleet.stop();
  });

  it('serves dials through either frontend, and both agents carry tunnels', async () => {
    const uds = fleet.frontends.map((f) => (f as unknown as { uds: string }).uds);
    const usedBy = new Map<string, number>();
    for (let i = 0; i < 40; i++) {
      const client = new ProxyStreamClient(`unix:${uds[i % 2]}`);
      const dial = await client.dial(web.address);
      assert.equal(dial.error, '', `dial ${i} via frontend ${i % 2}`);
      client.send(dial.connectID, Buffer.from(`GET /${i} HTTP/1.0\r\n\r\n`));
      await client.waitClosed(dial.connectID);
      assert.ok(client.dataOf(dial.connectID).toString().endsWith(`web /${i}`));
      client.close();
    }
    // Which agent served each tunnel: read their tunnel-close counters.
    for (const agent of fleet.agents) {
      const res = await fetch(`http://127.0.0.1:${agent.healthPort}/metrics`);
      const text = await res.text();
      const match = /knats_tunnels_closed_total\{reason="ok"\} (\d+)/.exec(text);
      usedBy.set(agent.id, Number(match?.[1] ?? 0));
    }
    for (const [id, count] of usedBy) assert.ok(count > 0, `agent ${id} carried ${count} tunnels`);
    assert.equal(
      [...usedBy.values()].reduce((a, b) => a + b, 0),
      40,
    );
    await eventually(() => fleet.frontends.every((f) => f.debugState().tunnels === 0), 'frontends idle');
  });
});
