/**
 * Operable under outages and mistakes: the bus out of reach at start, wrong
 * credentials (real permission violations from `knats broker config`'s own
 * least-privilege configuration) and the bus lost while serving, each seen at
 * once on /readyz, in one log line with a stable code, and in the metrics.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectBus, type NatsSettings } from '../../broker/bus/connection.js';
import type { KnatsError } from '../../broker/errors.js';
import { silentLogger } from '../../broker/logging.js';
import { startLocalServer } from '../../broker/nats-server/local-server.js';
import { brokerConfig } from '../../cli/broker-command.js';
import { connectOnce, connectRequest } from '../helpers/connect-client.js';
import { echoServer, refusedPort } from '../helpers/destinations.js';
import { agentArgs, eventually, Fleet, fetchText, frontendArgs } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

type Line = Record<string, unknown>;

/** No log line carries a stack trace. */
function assertNoStacks(logs: readonly Line[]): void {
  for (const line of logs)
    assert.doesNotMatch(JSON.stringify(line), /"stack"|\\n\s+at /, JSON.stringify(line));
}

function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const line = text
    .split('\n')
    .find(
      (l) =>
        (l.startsWith(`${name} `) || l.startsWith(`${name}{`)) &&
        Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)),
    );
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('the bus out of reach at start', () => {
  const fleet = new Fleet();
  after(() => fleet.stop());

  for (const role of ['agent', 'frontend'] as const) {
    it(`${role}: the health port opens at once, /readyz says why, one log line per reason, then ready when NATS comes`, async () => {
      const port = await refusedPort();
      const url = `nats://127.0.0.1:${port}`;
      const args =
        role === 'agent'
          ? ['agent', ...agentArgs(url)]
          : ['frontend', ...frontendArgs(url, fleet.socketPath())];
      const { healthPort, logs } = await fleet.spawn(args, 'health server listening');
      assert.equal((await fetchText(healthPort, '/healthz')).status, 200);
      const ready = await fetchText(healthPort, '/readyz');
      assert.equal(ready.status, 503);
      assert.match(
        ready.body,
        /^not ready: (connecting to NATS|cannot connect to NATS at nats:\/\/127\.0\.0\.1:\d+ \(refused)/,
      );
      const refusal = await eventually(
        () => logs.find((l) => l.code === 'KNATS_BUS_UNAVAILABLE' && l.kind === 'refused'),
        'a log line naming the refused connection',
      );
      assert.equal(refusal.servers, url);
      assert.match((await fetchText(healthPort, '/readyz')).body, /refused/);
      const metrics = (await fetchText(healthPort, '/metrics')).body;
      assert.equal(metric(metrics, 'knats_bus_connected'), 0);
      assert.ok(
        (metric(metrics, 'knats_bus_errors_total', { kind: 'refused' }) ?? 0) >= 1,
        'bus errors counted by kind',
      );
      // Several attempts fail meanwhile; the reason is logged once.
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(logs.filter((l) => l.kind === 'refused').length, 1, 'one line per distinct reason');

      const nats = await startLocalServer({ port });
      try {
        if (role === 'agent') {
          await eventually(
            async () => (await fetchText(healthPort, '/readyz')).status === 200,
            'agent ready',
            15_000,
          );
        } else {
          await eventually(
            async () => /no agent known/.test((await fetchText(healthPort, '/readyz')).body),
            'frontend connected (waiting for agents)',
            15_000,
          );
        }
        assert.equal(metric((await fetchText(healthPort, '/metrics')).body, 'knats_bus_connected'), 1);
        assertNoStacks(logs);
      } finally {
        await nats.stop();
      }
    });
  }
});

describe('each kind of connection failure is named', () => {
  it('dns, refused, tls, authentication', async () => {
    const nats = await startLocalServer({ extraConfig: 'authorization { user: bob, password: hunter2 }' });
    try {
      const cases: [NatsSettings, string][] = [
        [{ servers: ['nats://no-such-host.invalid:4222'] }, 'dns'],
        [{ servers: [`nats://127.0.0.1:${await refusedPort()}`] }, 'refused'],
        [
          {
            servers: [nats.url],
            user: 'bob',
            password: 'hunter2',
            tlsCaFile: '/etc/ssl/certs/ca-certificates.crt',
          },
          'tls',
        ],
        [{ servers: [nats.url], user: 'bob', password: 'wrong' }, 'authentication'],
      ];
      for (const [settings, kind] of cases) {
        const kinds: string[] = [];
        await assert.rejects(
          connectBus(settings, 'kinds', silentLogger(), { error: (k) => kinds.push(k) }, false),
          (err: KnatsError) => err.code === 'KNATS_BUS_UNAVAILABLE' && err.message.includes(`: ${kind}: `),
        );
        assert.deepEqual(kinds, [kind]);
      }
    } finally {
      await nats.stop();
    }
  });
});

describe('wrong credentials: the permission check at start', () => {
  const fleet = new Fleet();
  const dir = mkdtempSync(join(tmpdir(), 'knats-perm-'));
  let seeds: Map<string, string>;

  before(async () => {
    const generated = await brokerConfig(
      ['--agent', 'ag1', '--frontend', 'fe1', '--state-dir', join(dir, 'state')],
      {},
    );
    seeds = new Map(generated.credentials.map((c) => [`${c.role}:${c.id ?? ''}`, c.seedFile]));
    fleet.nats = await startLocalServer({ extraConfig: generated.config });
  });
  after(async () => {
    await fleet.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("an agent with a frontend's credentials names what it may not do and never becomes ready", async () => {
    const { healthPort, logs } = await fleet.spawn(
      [
        'agent',
        ...agentArgs(fleet.nats.url, ['--agent-id', 'ag1', '--nats-nkey', seeds.get('frontend:fe1')!]),
      ],
      'health server listening',
    );
    const refusal = await eventually(
      () => logs.find((l) => l.code === 'KNATS_BUS_PERMISSION'),
      'a permission error in the log',
    );
    assert.match(String(refusal.refused), /subscribe knats\.dial\.agent\.ag1/);
    const ready = await fetchText(healthPort, '/readyz');
    assert.equal(ready.status, 503);
    assert.match(ready.body, /NATS permission denied: .*subscribe knats\.dial\.agent\.ag1/);
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(logs.filter((l) => l.msg === 'agent ready').length, 0, 'never reports ready');
    assert.equal((await fetchText(healthPort, '/readyz')).status, 503);
    assert.equal(logs.filter((l) => l.code === 'KNATS_BUS_PERMISSION').length, 1, 'said once, not per retry');
    assertNoStacks(logs);
  });

  it("a frontend with an agent's credentials names its frame subject and the reply inbox", async () => {
    const { healthPort, logs } = await fleet.spawn(
      [
        'frontend',
        ...frontendArgs(fleet.nats.url, fleet.socketPath(), [
          '--server-id',
          'fe1',
          '--nats-nkey',
          seeds.get('agent:ag1')!,
        ]),
      ],
      'health server listening',
    );
    const refusal = await eventually(
      () => logs.find((l) => l.code === 'KNATS_BUS_PERMISSION'),
      'a permission error in the log',
    );
    assert.match(String(refusal.refused), /subscribe knats\.fe\.fe1\.\*/);
    assert.match(String(refusal.refused), /subscribe _INBOX\./);
    assert.match(String(refusal.refused), /publish knats\.dial\./);
    const ready = await fetchText(healthPort, '/readyz');
    assert.equal(ready.status, 503);
    assert.match(ready.body, /NATS permission denied/);
    assert.equal(logs.filter((l) => l.msg === 'frontend ready').length, 0);
    assertNoStacks(logs);
  });

  it('with the right credentials both become ready', async () => {
    const uds = fleet.socketPath();
    const fe = await fleet.spawnFrontend(uds, [
      '--server-id',
      'fe1',
      '--nats-nkey',
      seeds.get('frontend:fe1')!,
    ]);
    await fleet.spawnAgent(['--agent-id', 'ag1', '--nats-nkey', seeds.get('agent:ag1')!]);
    await eventually(
      async () => (await fetchText(fe.healthPort, '/readyz')).status === 200,
      'frontend ready',
    );
    assert.equal(fe.logs.filter((l) => l.code === 'KNATS_BUS_PERMISSION').length, 0);
  });
});

describe('the bus lost while serving', () => {
  const fleet = new Fleet();
  before(() => fleet.startNats());
  after(() => fleet.stop());

  it('/readyz turns 503 within a second, dials fail at once with KNATS_BUS_UNAVAILABLE (CONNECT 503), and all returns with the server', async () => {
    const grpc = await fleet.frontend();
    const connect = await fleet.frontend(['--mode', 'http-connect']);
    const agent = await fleet.agent();
    for (const fe of [grpc, connect]) {
      await eventually(async () => (await fetchText(fe.healthPort, '/readyz')).status === 200, 'ready');
    }
    const echo = await echoServer();

    const port = fleet.nats.port;
    fleet.nats.kill();
    await fleet.nats.exited;
    const killedAt = Date.now();
    const notReady = await eventually(
      async () => {
        const r = await fetchText(grpc.healthPort, '/readyz');
        return r.status === 503 && r;
      },
      '/readyz 503',
      5000,
    );
    const ms = Date.now() - killedAt;
    assert.ok(ms < 1000, `/readyz turned 503 ${ms} ms after the server died`);
    assert.match(notReady.body, /NATS connection to .* lost; reconnecting/);

    const dialer = new ProxyStreamClient(`unix:${grpc.uds}`);
    const started = Date.now();
    const refused = await dialer.dial(echo.address);
    assert.match(refused.error, /^KNATS_BUS_UNAVAILABLE: /);
    assert.ok(Date.now() - started < 1000, 'the dial failed at once');
    dialer.close();
    const { head, body } = await connectOnce({ path: connect.uds }, connectRequest(echo.address));
    assert.equal(head.status, 503);
    assert.match(body, /KNATS_BUS_UNAVAILABLE/);
    const metrics = (await fetchText(grpc.healthPort, '/metrics')).body;
    assert.equal(metric(metrics, 'knats_bus_connected'), 0);
    assert.ok((metric(metrics, 'knats_dial_failures_total', { reason: 'bus_unavailable' }) ?? 0) >= 1);
    assert.ok(
      (metric(metrics, 'konnectivity_network_proxy_server_dial_failure_count', { reason: 'no_agent' }) ??
        0) >= 1,
    );

    // The server is back: readiness and dials return by themselves.
    fleet.nats = await startLocalServer({ port });
    await eventually(async () => (await fetchText(grpc.healthPort, '/readyz')).status === 200, 'ready again');
    await eventually(async () => (await fetchText(agent.healthPort, '/readyz')).status === 200, 'agent back');
    const client = new ProxyStreamClient(`unix:${grpc.uds}`);
    const dial = await eventually(async () => {
      const d = await client.dial(echo.address);
      return d.error === '' && d;
    }, 'a dial after the outage');
    client.send(dial.connectID, Buffer.from('after'));
    await client.waitBytes(dial.connectID, 5);
    client.close();
    await echo.close();
  });
});
