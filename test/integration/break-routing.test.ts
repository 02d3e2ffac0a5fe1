/**
 * Breaker (break17): a hostile agent with its own per-agent credentials
 * against the frontend's choice of agent (FleetRoutes: better of two random
 * by load, shunning). Real nats-server with `knats broker config`, a real
 * frontend process and two honest agent processes.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLocalServer } from '../../broker/nats-server/local-server.js';
import {
  dialRequestCodec,
  dialResponseCodec,
  PROTOCOL_VERSION,
  type PresenceInfo,
} from '../../broker/wire/bus-messages.js';
import { encodeAccepted } from '../../broker/wire/codec.js';
import { claimsToken } from '../../broker/wire/identifiers.js';
import { Subjects } from '../../broker/wire/subjects.js';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { fakeHeartbeat } from '../helpers/heartbeats.js';
import { brokerConfigCli, connectWith, type ProbedConnection } from '../helpers/nats-permissions.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const subjects = new Subjects('knats');

const heartbeat = (fields: Partial<PresenceInfo>) => fakeHeartbeat({ heartbeatIntervalMs: 1000, ...fields });

type Mode = 'fails them at once' | 'acknowledges and stalls' | 'answers KNATS_SHUTTING_DOWN';

describe('breaker: a hostile agent against the frontend choosing agents', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-break-'));
  const seed = (name: string) => join(dir, 'state', 'knats', `${name}.nk`);
  const fleet = new Fleet();
  const uds = fleet.socketPath();
  let echo: Destination;
  let frontend: { child: ChildProcess; healthPort: number };
  let attacker: ProbedConnection;
  let mode: Mode = 'fails them at once';
  const received: string[] = [];
  let beat: NodeJS.Timeout;

  before(async () => {
    const config = brokerConfigCli(
      ['--agent', 'agA', '--agent', 'agB', '--agent', 'agC', '--frontend', 'fe1', '--state-dir', 'state'],
      dir,
    );
    fleet.nats = await startLocalServer({ extraConfig: config });
    echo = await echoServer();
    frontend = await fleet.spawnFrontend(uds, [
      '--server-id',
      'fe1',
      '--nats-nkey',
      seed('frontend-fe1'),
      '--proxy-strategies',
      'default',
      '--backend-dial-timeout',
      '3s',
    ]);
    for (const id of ['agB', 'agC']) {
      await fleet.spawnAgent(['--agent-id', id, '--nats-nkey', seed(`agent-${id}`)]);
    }
    attacker = await connectWith({ servers: [fleet.nats.url], nkeyFile: seed('agent-agA') }, 'attacker');
    attacker.subscribe(subjects.dialAgent('agA'), {
      callback: (_err, msg) => {
        const request = dialRequestCodec.decode(msg.data);
        received.push(request.tunnelId);
        const answer = (errorCode: string) =>
          msg.respond(
            dialResponseCodec.encode({
              protocolVersion: PROTOCOL_VERSION,
              tunnelId: request.tunnelId,
              agentId: 'agA',
              errorCode,
              errorMessage: 'dial tcp: connection refused',
              initialWindow: 1 << 20,
            }),
          );
        if (mode === 'fails them at once') answer('KNATS_DIAL_REFUSED');
        else if (mode === 'answers KNATS_SHUTTING_DOWN') answer('KNATS_SHUTTING_DOWN');
        else
          attacker.publish(subjects.frontendTunnel(request.frontendId, request.tunnelId), encodeAccepted());
      },
    });
    const subject = subjects.presence('agent', 'agA', claimsToken(''));
    // Idle and willing, forever: the truth, since it holds no tunnel.
    beat = setInterval(() => attacker.publish(subject, heartbeat({ openTunnels: 0 })), 500);
    attacker.publish(subject, heartbeat({ openTunnels: 0 }));
    await attacker.flush();
    await eventually(async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200, 'ready');
    // Every agent's heartbeat (the attacker's every second) has reached the frontend.
    await new Promise((r) => setTimeout(r, 1500));
  });

  after(async () => {
    clearInterval(beat);
    await attacker?.close();
    await echo?.close();
    await fleet.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Sequential dials, each closed at once; returns how many failed. */
  async function sequentialDials(n: number): Promise<{ failed: number; errors: Set<string>; ms: number[] }> {
    let failed = 0;
    const errors = new Set<string>();
    const ms: number[] = [];
    const client = new ProxyStreamClient(`unix:${uds}`);
    try {
      for (let i = 0; i < n; i++) {
        const dial = await client.dial(echo.address);
        ms.push(dial.ms);
        if (dial.error) {
          failed++;
          errors.add(dial.error.slice(0, 60));
        } else {
          client.closeRequest(dial.connectID);
          await client.waitClosed(dial.connectID);
        }
      }
    } finally {
      client.close();
    }
    return { failed, errors, ms };
  }

  /** Long-lived tunnels (as kube-apiserver's logs -f / exec / watch): the honest agents carry load. */
  async function holdTunnels(n: number): Promise<ProxyStreamClient> {
    const client = new ProxyStreamClient(`unix:${uds}`);
    let opened = 0;
    while (opened < n) {
      const dial = await client.dial(echo.address);
      if (!dial.error) opened++;
    }
    return client;
  }

  it('an agent that fails every dial at once (honest agents idle): its share', async () => {
    mode = 'fails them at once';
    received.length = 0;
    const n = 90;
    const { failed, errors } = await sequentialDials(n);
    console.log(
      `# idle honest agents: agA got ${received.length}/${n}, ${failed} dials failed: ${[...errors]}`,
    );
  });

  it('an agent that fails every dial at once gets no more than a third of the dials (3 agents) when the honest ones carry tunnels', async () => {
    mode = 'fails them at once';
    const held = await holdTunnels(4);
    try {
      received.length = 0;
      const n = 90;
      const { failed, errors } = await sequentialDials(n);
      console.log(
        `# honest agents with 4 tunnels between them: agA got ${received.length}/${n}, ${failed} dials failed: ${[...errors]}`,
      );
      assert.ok(failed <= n * 0.45, `${failed} of ${n} dials failed (a fair share is ${n / 3})`);
    } finally {
      held.close();
    }
  });

  it('an agent answering KNATS_SHUTTING_DOWN to every dial while its heartbeat says it is not draining', async () => {
    mode = 'answers KNATS_SHUTTING_DOWN';
    const held = await holdTunnels(4);
    try {
      received.length = 0;
      const n = 90;
      const { failed, ms } = await sequentialDials(n);
      ms.sort((a, b) => a - b);
      console.log(
        `# SHUTTING_DOWN liar: agA offered ${received.length}/${n} dials, ${failed} failed, dial ms p50 ${ms[n >> 1]} p99 ${ms[Math.floor(n * 0.99)]}`,
      );
      assert.equal(failed, 0);
    } finally {
      held.close();
    }
  });

  it('an agent that acknowledges and stalls, against a burst of concurrent dials while honest agents carry tunnels', async () => {
    mode = 'fails them at once';
    const held = await holdTunnels(20);
    mode = 'acknowledges and stalls';
    try {
      received.length = 0;
      const n = 40;
      const clients = Array.from({ length: 4 }, () => new ProxyStreamClient(`unix:${uds}`));
      const results = await Promise.all(
        Array.from({ length: n }, (_, i) => clients[i % clients.length]!.dial(echo.address)),
      );
      const failed = results.filter((r) => r.error);
      console.log(
        `# ACK-and-stall, burst of ${n} with 20 honest tunnels open: agA got ${received.length}, ${failed.length} failed (${failed[0]?.error.slice(0, 50)}), slowest ${Math.max(...results.map((r) => r.ms))} ms`,
      );
      for (const c of clients) c.close();
      // A second burst right after: the agent is shunned for 10 s.
      received.length = 0;
      const clients2 = Array.from({ length: 4 }, () => new ProxyStreamClient(`unix:${uds}`));
      const results2 = await Promise.all(
        Array.from({ length: n }, (_, i) => clients2[i % clients2.length]!.dial(echo.address)),
      );
      console.log(
        `# second burst: agA got ${received.length}, ${results2.filter((r) => r.error).length} failed`,
      );
      for (const c of clients2) c.close();
    } finally {
      held.close();
    }
  });
});
