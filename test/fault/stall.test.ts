/**
 * A process that stalls (a long synchronous task, a GC pause, a stopped VM)
 * longer than its peers' allowed silence: when it runs again its timers fire
 * before it reads the heartbeats that waited in its socket, so it must not
 * take the stall for its peers' silence, drop them and close their tunnels.
 * Frontend and agent run in this process, so both stall together.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const BEAT = ['--heartbeat-interval', '200ms'];

describe('a stalled process keeps its peers', () => {
  const fleet = new Fleet();
  let echo: Destination;
  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
  });
  after(async () => {
    await echo.close();
    await fleet.stop();
  });

  it('a 1.5 s stall (allowed silence: 600 ms) drops no peer and closes no tunnel', async () => {
    const frontend = await fleet.frontend(BEAT);
    const agent = await fleet.agent(BEAT);
    await eventually(() => frontend.debugState().agentsTakingDials === 1, 'agent known');
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    try {
      const dial = await client.dial(echo.address);
      assert.equal(dial.error, '');
      client.send(dial.connectID, Buffer.from('before'));
      await client.waitBytes(dial.connectID, 6);
      const stallUntil = Date.now() + 1500;
      while (Date.now() < stallUntil) {
        // Synchronous work: no timer, socket or heartbeat runs meanwhile.
      }
      // One turn for the late timers and the waiting heartbeats, then a few beats more.
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(client.closeError(dial.connectID), undefined, 'the tunnel survived the stall');
      assert.equal(frontend.debugState().agentsTakingDials, 1, 'the frontend kept the agent');
      assert.equal(agent.debugState().tunnels, 1, 'the agent kept the tunnel');
      client.send(dial.connectID, Buffer.from('after'));
      await client.waitBytes(dial.connectID, 11);
      assert.equal(client.dataOf(dial.connectID).toString(), 'beforeafter');
    } finally {
      client.close();
    }
  });
});
