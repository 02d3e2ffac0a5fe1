/**
 * A dial costs its request and its answer on the bus, nothing more on the
 * critical path, while a slow dial and a frozen agent are still told apart:
 * watched from a raw NATS connection on a real nats-server, with real
 * frontend and agent processes.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { FrameType } from '../../broker/wire/codec.js';
import { type Destination, echoServer, hangingPort } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

/** Every tunnel frame on the bus, by subject, in order of arrival. */
function watchFrames(nc: NatsConnection): Map<string, number[]> {
  const frames = new Map<string, number[]>();
  for (const subject of ['knats.fe.>', 'knats.ag.>']) {
    nc.subscribe(subject, {
      callback: (_err, msg) => {
        const list = frames.get(msg.subject) ?? [];
        list.push(msg.data[0] ?? -1);
        frames.set(msg.subject, list);
      },
    });
  }
  return frames;
}

describe('dial critical path', () => {
  const fleet = new Fleet();
  let raw: NatsConnection;
  let frames: Map<string, number[]>;
  let echo: Destination;
  let frozen: ChildProcess | undefined;

  before(async () => {
    await fleet.startNats();
    raw = await connect({ servers: fleet.nats.url });
    frames = watchFrames(raw);
    await raw.flush();
    await fleet.agent(['--agent-id', 'lively', '--agent-identifiers', 'default-route=true']);
    echo = await echoServer();
  });

  after(async () => {
    frozen?.kill('SIGCONT');
    await raw?.close();
    await echo?.close();
    await fleet.stop();
  });

  it('a quick dial sends neither ACCEPTED nor a confirming WINDOW: the client’s first frame confirms it', async () => {
    const frontend = await fleet.frontend();
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    try {
      frames.clear();
      for (let i = 0; i < 5; i++) {
        const dial = await client.dial(echo.address);
        assert.equal(dial.error, '');
        client.send(dial.connectID, Buffer.from('ping'));
        await client.waitBytes(dial.connectID, 4);
        client.closeRequest(dial.connectID);
        await client.waitClosed(dial.connectID);
      }
      await raw.flush();
      const toAgent = [...frames].filter(([subject]) => subject.startsWith('knats.ag.'));
      const toFrontend = [...frames].filter(([subject]) => subject.startsWith('knats.fe.'));
      assert.equal(toAgent.length, 5, 'five tunnels');
      for (const [subject, types] of toAgent) {
        assert.equal(types[0], FrameType.Data, `${subject}: the client's DATA is the first frame (${types})`);
      }
      for (const [subject, types] of toFrontend) {
        assert.ok(!types.includes(FrameType.Accepted), `${subject}: no ACCEPTED (${types})`);
      }
      // The agent still learns each tunnel is wanted: none is left unconfirmed.
      const agent = fleet.agents[0]!;
      await eventually(() => agent.debugState().unconfirmedTunnels === 0, 'no unconfirmed tunnel');
    } finally {
      client.close();
    }
  });

  it('a tunnel whose client sends nothing is confirmed soon anyway, and stays open', async () => {
    const frontend = await fleet.frontend();
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    try {
      frames.clear();
      const dial = await client.dial(echo.address);
      assert.equal(dial.error, '');
      await eventually(() => {
        const toAgent = [...frames].find(([subject]) => subject.startsWith('knats.ag.'));
        return toAgent?.[1][0] === FrameType.Window;
      }, 'a confirming WINDOW within a second');
      const agent = fleet.agents[0]!;
      assert.equal(agent.debugState().unconfirmedTunnels, 0);
      client.send(dial.connectID, Buffer.from('late'));
      await client.waitBytes(dial.connectID, 4);
    } finally {
      client.close();
    }
  });

  it('a dial the agent cannot answer within half the accept timeout is acknowledged, so it is not taken for dead', async () => {
    const frontend = await fleet.frontend([
      '--dial-accept-timeout',
      '300ms',
      '--backend-dial-timeout',
      '1500ms',
    ]);
    const hanging = await hangingPort();
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    try {
      frames.clear();
      const started = Date.now();
      const dial = await client.dial(`127.0.0.1:${hanging.port}`);
      assert.match(dial.error, /timeout/i, 'the agent dialed until its own timeout');
      assert.ok(Date.now() - started >= 1400, 'one attempt, to the end of the dial timeout');
      const toFrontend = [...frames].filter(([subject]) => subject.startsWith('knats.fe.'));
      assert.equal(toFrontend.length, 1, 'one attempt');
      assert.deepEqual(toFrontend[0]![1], [FrameType.Accepted]);
    } finally {
      client.close();
      hanging.close();
    }
  });

  it('a frozen agent is taken for dead after the accept timeout and the dial goes elsewhere', async () => {
    const spawned = await fleet.spawnAgent(['--agent-id', 'frozen', '--agent-identifiers', 'ipv4=127.0.0.1']);
    frozen = spawned.child;
    const frontend = await fleet.frontend([
      // Not `default`: its queue group holds the frozen agent too, which may take every retry.
      '--proxy-strategies',
      'destHost,defaultRoute',
      '--dial-accept-timeout',
      '300ms',
    ]);
    await eventually(async () => {
      const page = (await fetchText(frontend.healthPort, '/metrics')).body;
      return /ready_backends\{proxy_strategy="default"\} 2$/m.test(page);
    }, 'the frontend routes 127.0.0.1 to the frozen agent');
    // Its NATS connection stays up, so the server still hands it dials: only the silence tells.
    frozen.kill('SIGSTOP');
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    try {
      const started = Date.now();
      const dial = await client.dial(echo.address);
      const took = Date.now() - started;
      assert.equal(dial.error, '', 'served by the lively agent');
      assert.ok(took >= 280 && took < 3000, `after the accept timeout, not the dial timeout (${took} ms)`);
    } finally {
      client.close();
      frozen.kill('SIGCONT');
    }
  });
});
