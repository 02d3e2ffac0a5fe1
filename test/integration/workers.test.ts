/**
 * `knats frontend --workers 2` as a real process tree (cluster primary + 2
 * workers) on a real nats-server: tunnels through both doors, one health
 * endpoint with aggregated metrics and per-worker readiness, a killed worker
 * restarted while the other worker's tunnels keep flowing, SIGTERM, and the
 * per-frontend NATS user of `knats broker config --frontend ID
 * --frontend-workers N`.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort, startLocalServer } from '../../broker/nats-server/local-server.js';
import { createPki, type Pki } from '../helpers/certs.js';
import { connectRequest, DoorClient, type DoorTarget } from '../helpers/connect-client.js';
import {
  type Destination,
  echoServer,
  randomBytesSeeded,
  sha256,
  shaServer,
} from '../helpers/destinations.js';
import { eventually, Fleet, fetchText, frontendArgs, runCli } from '../helpers/fleet.js';
import { brokerConfigCli } from '../helpers/nats-permissions.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const READY = 'all frontend workers ready';

interface WorkerState {
  index: number;
  pid?: number;
  ready: boolean;
  restarts: number;
  state?: { id: string; tunnels: number };
}

/** The admin port a spawned frontend logged. */
function adminPortOf(logs: Record<string, unknown>[]): number {
  const line = logs.find((l) => l.msg === 'health server listening' && l.server === 'admin');
  assert.ok(line, 'admin port logged');
  return line.port as number;
}

async function workersOf(adminPort: number): Promise<WorkerState[]> {
  const { body } = await fetchText(adminPort, '/debug/state');
  return (JSON.parse(body) as { workers: WorkerState[] }).workers;
}

/** The value of an unlabelled series in a Prometheus text page. */
function metric(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

/** Opens gRPC tunnels (one HTTP/2 connection each) until both workers serve at least one. */
async function tunnelsOnBothWorkers(uds: string, adminPort: number, echo: Destination) {
  const tunnels: { client: ProxyStreamClient; connectID: number }[] = [];
  await eventually(
    async () => {
      const client = new ProxyStreamClient(`unix:${uds}`);
      const dial = await client.dial(echo.address);
      assert.equal(dial.error, '');
      tunnels.push({ client, connectID: dial.connectID });
      const workers = await workersOf(adminPort);
      return tunnels.length >= 2 && workers.every((w) => (w.state?.tunnels ?? 0) > 0);
    },
    'tunnels on both workers',
    20_000,
  );
  return tunnels;
}

async function echoes(client: ProxyStreamClient, connectID: number, text: string): Promise<boolean> {
  const before = client.bytesOf(connectID);
  client.send(connectID, Buffer.from(text));
  try {
    await client.waitBytes(connectID, before + text.length, 5000);
    return true;
  } catch {
    return false;
  }
}

/** A new tunnel (its own HTTP/2 connection) through the socket echoes `text`. */
/**
 * A new tunnel echoes. Within 5 s: a connection the primary hands to a worker at the instant it is
 * killed is served by nobody (Node's round robin; docs/deployment.md's Workers limits), so the caller retries.
 */
async function newTunnelEchoes(uds: string, echo: Destination, text: string): Promise<boolean> {
  const client = new ProxyStreamClient(`unix:${uds}`);
  let timer: NodeJS.Timeout | undefined;
  try {
    const dial = await Promise.race([
      client.dial(echo.address),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('no DIAL_RSP within 5 s')), 5000);
      }),
    ]);
    assert.equal(dial.error, '');
    return await echoes(client, dial.connectID, text);
  } finally {
    clearTimeout(timer);
    client.close();
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Until /readyz answers `status`. */
function untilReadyz(healthPort: number, status: number, what: string, timeoutMs?: number) {
  return eventually(async () => (await fetchText(healthPort, '/readyz')).status === status, what, timeoutMs);
}

/** `knats frontend --workers 2 ...extra` on a fresh socket, once it is ready. */
async function readyWorkers(fleet: Fleet, extra: readonly string[] = []) {
  const uds = fleet.socketPath();
  const { child, healthPort, logs } = await fleet.spawnFrontend(uds, ['--workers', '2', ...extra], READY);
  await untilReadyz(healthPort, 200, 'ready');
  return { uds, child, healthPort, logs, adminPort: adminPortOf(logs) };
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

describe('knats frontend --workers 2', () => {
  const fleet = new Fleet();
  let echo: Destination;
  before(async () => {
    await fleet.startNats();
    await fleet.agent();
    echo = await echoServer();
  });
  after(async () => {
    await echo.close();
    await fleet.stop();
  });

  it('gRPC door: tunnels spread over both workers, one /metrics and /readyz for the process, a killed worker is restarted while the other tunnels flow', async () => {
    const uds = fleet.socketPath();
    const { child, healthPort, logs } = await fleet.spawnFrontend(
      uds,
      ['--workers', '2', '--server-id', 'fe', '--heartbeat-interval', '500ms'],
      READY,
    );
    const adminPort = adminPortOf(logs);
    // Only the primary created the socket, with the default --uds-mode.
    assert.equal(statSync(uds).mode & 0o777, 0o660);
    const workerIds = logs.filter((l) => l.msg === 'frontend worker ready').map((l) => l.workerId);
    assert.deepEqual(workerIds.sort(), ['fe-w1', 'fe-w2']);
    // Every worker's log line carries its index.
    assert.ok(logs.some((l) => l.msg === 'frontend ready' && l.worker === 1 && l.frontendId === 'fe-w1'));
    assert.ok(logs.some((l) => l.msg === 'frontend ready' && l.worker === 2 && l.frontendId === 'fe-w2'));
    await eventually(async () => (await fetchText(healthPort, '/readyz')).status === 200, 'ready');

    const tunnels = await tunnelsOnBothWorkers(uds, adminPort, echo);
    for (const t of tunnels) assert.ok(await echoes(t.client, t.connectID, 'hello'), 'tunnel echoes');
    const metrics = (await fetchText(healthPort, '/metrics')).body;
    assert.equal(metric(metrics, 'knats_frontend_workers'), 2);
    assert.equal(metric(metrics, 'knats_frontend_workers_ready'), 2);
    // Per-process views of the same bus and fleet are not added up.
    assert.equal(metric(metrics, 'knats_bus_connected'), 1);
    assert.equal(
      metric(metrics, 'konnectivity_network_proxy_server_ready_backends{proxy_strategy="default"}'),
      1,
    );
    // Summed over the workers: every tunnel of either worker.
    assert.equal(metric(metrics, 'knats_open_tunnels'), tunnels.length);
    assert.equal(
      metric(metrics, 'konnectivity_network_proxy_server_dial_duration_seconds_count'),
      tunnels.length,
    );

    // Kill worker 1; worker 2's tunnels keep carrying bytes. Workers report their state every 250 ms:
    // wait until the reports count every tunnel before taking them as the split.
    const before = await eventually(async () => {
      const workers = await workersOf(adminPort);
      const counted = workers.reduce((n, w) => n + (w.state?.tunnels ?? 0), 0);
      return counted === tunnels.length && workers;
    }, 'worker reports count every tunnel');
    const victim = before.find((w) => w.index === 1)!;
    const survivors = before.find((w) => w.index === 2)!.state!.tunnels;
    process.kill(victim.pid!, 'SIGKILL');
    await eventually(
      async () => /worker 1: killed by SIGKILL/.test((await fetchText(healthPort, '/readyz')).body),
      '/readyz names the dead worker',
    );
    let flowing = 0;
    for (const t of tunnels) if (await echoes(t.client, t.connectID, 'still there')) flowing++;
    assert.equal(flowing, survivors, "worker 2's tunnels all flow, worker 1's are gone");
    await eventually(
      () =>
        logs.some(
          (l) =>
            l.code === 'KNATS_WORKER_EXITED' &&
            l.index === 1 &&
            l.msg === 'frontend worker exited; restarting it',
        ),
      'the exit logged with its code',
    );
    // Restarted (a new process with the same id) and ready again: new dials go through.
    await eventually(
      async () => (await fetchText(healthPort, '/readyz')).status === 200,
      'ready again',
      15_000,
    );
    // The agent learns from the new worker's first heartbeat (a new incarnation under fe-w1) that the old
    // one is gone, and lets its tunnels go at once: the beats of the new one do not keep them alive.
    await eventually(
      () => fleet.agents[0]!.debugState().tunnels === survivors,
      "the agent closed the dead worker's tunnels",
      5000,
    );
    const after = await workersOf(adminPort);
    const restarted = after.find((w) => w.index === 1)!;
    assert.notEqual(restarted.pid, victim.pid);
    assert.equal(restarted.restarts, 1);
    assert.equal(restarted.state?.id, 'fe-w1');
    assert.equal(
      metric((await fetchText(healthPort, '/metrics')).body, 'knats_frontend_worker_restarts_total'),
      1,
    );
    for (let i = 0; i < 4; i++) {
      const client = new ProxyStreamClient(`unix:${uds}`);
      const dial = await client.dial(echo.address);
      assert.equal(dial.error, '');
      assert.ok(await echoes(client, dial.connectID, 'new'));
      client.close();
    }
    for (const t of tunnels) t.client.close();

    // SIGTERM: not ready at once, every worker drains and exits, the socket file goes.
    const pids = after.map((w) => w.pid!);
    const open = new ProxyStreamClient(`unix:${uds}`);
    const dial = await open.dial(echo.address);
    assert.equal(dial.error, '');
    child.kill('SIGTERM');
    await eventually(
      async () =>
        (await fetchText(healthPort, '/readyz').catch(() => ({ body: '' }))).body.includes('draining'),
      'draining',
    );
    assert.ok(await echoes(open, dial.connectID, 'during drain'), 'an open tunnel finishes during the drain');
    open.close();
    assert.equal(await exited(child), 0);
    assert.ok(
      pids.every((pid) => !alive(pid)),
      'no worker outlives the primary',
    );
    assert.equal(existsSync(uds), false, 'socket file removed');
  });

  it('CONNECT door over mTLS TCP: both workers serve the one port; the live socket is not taken over; workers do not outlive a killed primary', async () => {
    const pki: Pki = createPki(join(fleet.dir, 'pki'));
    const port = await freePort();
    const uds = fleet.socketPath();
    const { child, logs } = await fleet.spawnFrontend(
      uds,
      [
        '--workers',
        '2',
        '--mode',
        'http-connect',
        '--server-port',
        String(port),
        '--server-cert',
        pki.server.cert,
        '--server-key',
        pki.server.key,
        '--server-ca-cert',
        pki.ca.cert,
      ],
      READY,
    );
    const adminPort = adminPortOf(logs);
    const target: DoorTarget = { port, ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key };
    const clients: DoorClient[] = [];
    let workers: WorkerState[] = [];
    await eventually(
      async () => {
        const client = await DoorClient.open(target);
        clients.push(client);
        await client.write(connectRequest(echo.address));
        assert.equal((await client.readHead()).status, 200);
        await client.write('ping');
        assert.equal((await client.readBytes(4)).toString(), 'ping');
        workers = await workersOf(adminPort);
        return workers.every((w) => (w.state?.tunnels ?? 0) > 0);
      },
      'CONNECT tunnels on both workers',
      20_000,
    );
    for (const client of clients) client.close();

    // The primary answers on the socket: another frontend does not take it over.
    const second = await runCli(['frontend', ...frontendArgs(fleet.nats.url, uds, ['--workers', '2'])]);
    assert.equal(second.code, 2);
    assert.match(second.stderr, /another process listens on it/);

    // The primary killed with SIGKILL: its workers do not outlive it.
    const pids = workers.map((w) => w.pid!);
    child.kill('SIGKILL');
    await eventually(() => pids.every((pid) => !alive(pid)), 'workers gone with their primary', 15_000);
  });

  it("the process's counters never go down when a worker is killed and restarted", async () => {
    // Prometheus takes any decrease of a counter for a process restart and counts the whole new
    // value again: a sum over workers that loses one worker's share would show as a burst in rate().
    const { uds, child, healthPort, adminPort } = await readyWorkers(fleet, ['--server-id', 'fe-count']);
    const tunnels = await tunnelsOnBothWorkers(uds, adminPort, echo);
    for (const t of tunnels) t.client.close();
    const dials = 'konnectivity_network_proxy_server_dial_duration_seconds_count';
    const before = metric((await fetchText(healthPort, '/metrics')).body, dials)!;
    assert.equal(before, tunnels.length);
    const victim = (await workersOf(adminPort)).find((w) => w.index === 1)!;
    process.kill(victim.pid!, 'SIGKILL');
    // Scraped while the worker is down and after its restart.
    await eventually(
      async () => /worker 1: killed by SIGKILL/.test((await fetchText(healthPort, '/readyz')).body),
      '/readyz names the dead worker',
    );
    const down = metric((await fetchText(healthPort, '/metrics')).body, dials)!;
    await untilReadyz(healthPort, 200, 'ready again', 15_000);
    const restarted = metric((await fetchText(healthPort, '/metrics')).body, dials)!;
    assert.ok(
      down >= before && restarted >= before,
      `dials counted ${before}, then ${down}, then ${restarted}`,
    );
    child.kill('SIGKILL');
  });

  it('a worker that stops answering (wedged, SIGSTOP) makes /readyz 503 naming it, until it answers again', async () => {
    const { child, healthPort, adminPort } = await readyWorkers(fleet);
    const victim = (await workersOf(adminPort)).find((w) => w.index === 2)!;
    process.kill(victim.pid!, 'SIGSTOP');
    try {
      const readyz = await eventually(
        async () => {
          const res = await fetchText(healthPort, '/readyz');
          return res.status === 503 && res;
        },
        '/readyz 503 while worker 2 answers nothing',
        10_000,
      );
      assert.match(readyz.body, /worker 2: no report for/);
    } finally {
      process.kill(victim.pid!, 'SIGCONT');
    }
    await untilReadyz(healthPort, 200, 'ready again');
    child.kill('SIGKILL');
  });

  it('every worker killed at once: the restarted workers serve the socket again, with its mode', async () => {
    const { uds, child, healthPort, adminPort } = await readyWorkers(fleet);
    for (const w of await workersOf(adminPort)) process.kill(w.pid!, 'SIGKILL');
    await untilReadyz(healthPort, 503, 'not ready');
    await untilReadyz(healthPort, 200, 'ready again', 15_000);
    assert.equal(statSync(uds).mode & 0o777, 0o660);
    assert.ok(await newTunnelEchoes(uds, echo, 'back'));
    child.kill('SIGTERM');
    assert.equal(await exited(child), 0);
    assert.equal(existsSync(uds), false, 'socket file removed');
  });

  it('SIGTERM in the middle of downloads through both workers: every download completes byte-exact, then exit 0', async () => {
    const download = randomBytesSeeded(3 << 20, 5);
    const server = await shaServer(4, download);
    const { uds, child, adminPort } = await readyWorkers(fleet, ['--mode', 'http-connect']);
    const clients: DoorClient[] = [];
    await eventually(
      async () => {
        const client = await DoorClient.open({ path: uds });
        clients.push(client);
        await client.write(connectRequest(server.address));
        assert.equal((await client.readHead()).status, 200);
        // Slow readers: the downloads are still under way when the signal comes.
        client.socket.pause();
        await client.write('four');
        const workers = await workersOf(adminPort);
        return clients.length >= 6 && workers.every((w) => (w.state?.tunnels ?? 0) > 0);
      },
      'downloads on both workers',
      20_000,
    );
    child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    const results = await Promise.all(
      clients.map(async (client) => {
        client.socket.resume();
        const got = await client.readToEnd(30_000);
        return sha256(got.subarray(32)) === sha256(download) && got.length === 32 + download.length;
      }),
    );
    assert.deepEqual(
      results.map((ok, i) => (ok ? 'complete' : `download ${i} short or wrong`)),
      results.map(() => 'complete'),
    );
    assert.equal(await exited(child), 0);
    await server.close();
  });

  it('a worker that keeps crashing is restarted with a doubling backoff; the other worker serves throughout', async () => {
    const { uds, child, healthPort, adminPort, logs } = await readyWorkers(fleet);
    let pid = (await workersOf(adminPort)).find((w) => w.index === 1)!.pid!;
    for (let crash = 1; crash <= 3; crash++) {
      process.kill(pid, 'SIGKILL');
      await eventually(
        () => newTunnelEchoes(uds, echo, `crash ${crash}`).catch(() => false),
        'the other worker takes the new tunnels',
        15_000,
      );
      const restarted = await eventually(
        async () => {
          const w = (await workersOf(adminPort)).find((w) => w.index === 1)!;
          return w.pid !== pid && w.ready && w.restarts === crash && w;
        },
        `worker 1 restarted ${crash} times`,
        15_000,
      );
      pid = restarted.pid!;
    }
    const metrics = (await fetchText(healthPort, '/metrics')).body;
    assert.equal(metric(metrics, 'knats_frontend_worker_restarts_total'), 3);
    const delays = logs
      .filter((l) => l.code === 'KNATS_WORKER_EXITED' && l.index === 1)
      .map((l) => l.restartInMs);
    assert.deepEqual(delays, [250, 500, 1000]);
    child.kill('SIGKILL');
  });

  it('a worker that cannot start stops the process with its error, instead of restarting forever', async () => {
    const missing = join(fleet.dir, 'missing.pem');
    const tls = ['--server-cert', missing, '--server-key', missing, '--server-ca-cert', missing];
    const args = ['--workers', '2', '--server-port', String(await freePort()), ...tls];
    const run = await runCli(['frontend', ...frontendArgs(fleet.nats.url, fleet.socketPath(), args)], {
      timeoutMs: 30_000,
    });
    assert.equal(run.code, 2, run.stderr);
    // The worker's own one-line error, then the primary's, which names the worker.
    assert.match(run.stderr, /knats frontend: --server-cert .*ENOENT/);
    assert.match(run.stderr, /knats frontend: frontend worker [12] failed to start \(exited with code 2/);
    assert.doesNotMatch(run.stderr, /restarting it/);
  });
});

describe('knats broker config --frontend ID --frontend-workers N on a real nats-server', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-workers-'));
  const fleet = new Fleet();
  after(async () => {
    await fleet.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("each worker's id is within its frontend user's rights; without --frontend-workers they are refused", async () => {
    const config = brokerConfigCli(
      ['--frontend', 'fe', '--frontend-workers', '2', '--agent', 'a1', '--state-dir', 'state'],
      dir,
    );
    assert.match(config, /frontend fe and its workers fe-w1\.\.fe-w2/);
    assert.match(config, /"_INBOX\.fe\.fe-w2\.>"/);
    fleet.nats = await startLocalServer({ extraConfig: config });
    const seed = (name: string) => join(dir, 'state', 'knats', `${name}.nk`);
    await fleet.agent(['--agent-id', 'a1', '--nats-nkey', seed('agent-a1')]);
    const echo = await echoServer();
    const uds = fleet.socketPath();
    const { child, healthPort } = await fleet.spawnFrontend(
      uds,
      ['--workers', '2', '--server-id', 'fe', '--nats-nkey', seed('frontend-fe')],
      READY,
    );
    await eventually(
      async () => (await fetchText(healthPort, '/readyz')).status === 200,
      'ready with its own user',
    );
    assert.ok(await newTunnelEchoes(uds, echo, 'permitted'));
    child.kill('SIGTERM');
    assert.equal(await exited(child), 0);

    // A user granted only `fe` (no workers): the workers are refused their subjects and say so.
    await fleet.nats.stop();
    const narrow = brokerConfigCli(['--frontend', 'fe', '--state-dir', 'state'], dir);
    fleet.nats = await startLocalServer({ extraConfig: narrow });
    const refused = await fleet.spawnFrontend(
      fleet.socketPath(),
      ['--workers', '2', '--server-id', 'fe', '--nats-nkey', seed('frontend-fe')],
      'health server listening',
    );
    await eventually(
      () => refused.logs.some((l) => l.code === 'KNATS_BUS_PERMISSION' && l.worker === 1),
      "worker 1 logs the server's refusal",
    );
    const { status, body } = await fetchText(refused.healthPort, '/readyz');
    assert.equal(status, 503);
    assert.match(body, /worker 1: starting; worker 2: starting/);
    refused.child.kill('SIGKILL');
    await echo.close();
  });
});
