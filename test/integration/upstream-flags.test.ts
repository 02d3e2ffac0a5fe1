/**
 * Upstream's example manifests' arguments start real `knats` processes with
 * only --nats-url added (and, on this shared test machine, the socket, log
 * file and ports moved to free ones): they join the bus, log one warning per
 * flag without meaning here, and carry a tunnel. --enable-profiling serves
 * profiles on the admin port; the keepalive flags are seen on the wire.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect as http2Connect } from 'node:http2';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ErrorCode } from '../../broker/errors.js';
import { type ExampleArgs, exampleArgs } from '../fixtures/upstream-konnectivity.js';
import { connectOnce, connectRequest } from '../helpers/connect-client.js';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { agentArgs, cliPath, eventually, Fleet, fetchText, frontendArgs } from '../helpers/fleet.js';
import { ProxyStreamClient, randomId } from '../helpers/proxy-client.js';

type Line = Record<string, unknown>;

function example(source: string): ExampleArgs {
  const found = exampleArgs.find((e) => e.source === source);
  assert.ok(found, source);
  return found;
}

function upstreamWarnings(logs: Line[]): string[] {
  return logs
    .filter((l) => l.code === ErrorCode.UpstreamFlagReplaced)
    .map((l) => {
      assert.equal(l.level, 40, 'a warning');
      assert.equal(typeof l.replacedBy, 'string');
      return String(l.flag);
    })
    .sort();
}

function adminPort(logs: Line[]): number {
  const line = logs.find((l) => l.msg === 'health server listening' && l.server === 'admin');
  assert.ok(line, 'the admin port is logged');
  return Number(line.port);
}

describe("upstream's example manifests run with only --nats-url added", () => {
  const fleet = new Fleet();
  let echo: Destination;
  let agentLogs: Line[];

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
    const agent = example('examples/kind/konnectivity-agent-ds.yaml');
    // The test destination listens on loopback, which agents deny unless allowed (agentArgs).
    ({ logs: agentLogs } = await fleet.spawn(
      ['agent', ...agent.args, ...agentArgs(fleet.nats.url)],
      'agent ready',
    ));
  });
  after(async () => {
    await echo.close();
    await fleet.stop();
  });

  it('the agent of examples/kind warns once per flag without meaning here', () => {
    const agent = example('examples/kind/konnectivity-agent-ds.yaml');
    assert.deepEqual(upstreamWarnings(agentLogs), [...agent.replaced].sort());
  });

  it('the proxy-server of examples/kind-multinode serves a gRPC tunnel', async () => {
    const server = example('examples/kind-multinode/templates/k8s/konnectivity-server.yaml');
    const uds = fleet.socketPath();
    const { logs, healthPort } = await fleet.spawn(
      ['frontend', ...server.args, ...frontendArgs(fleet.nats.url, uds)],
      'frontend ready',
    );
    assert.deepEqual(upstreamWarnings(logs), [...server.replaced].sort());
    await eventually(async () => (await fetchText(healthPort, '/readyz')).status === 200, 'frontend ready');

    const client = new ProxyStreamClient(`unix:${uds}`);
    try {
      const dial = await client.dial(echo.address, randomId());
      assert.equal(dial.error, '');
      client.send(dial.connectID, Buffer.from('through upstream flags'));
      await client.waitBytes(dial.connectID, 22);
      assert.equal(client.dataOf(dial.connectID).toString(), 'through upstream flags');
    } finally {
      client.close();
    }
  });

  it('the proxy-server of examples/kubernetes (HTTP CONNECT) logs to its --log-file, nothing on stderr', async () => {
    const server = example('examples/kubernetes/konnectivity-server.yaml');
    const uds = fleet.socketPath();
    const logFile = join(fleet.dir, 'konnectivity-server.log');
    const child: ChildProcess = spawn(
      process.execPath,
      [cliPath, 'frontend', ...server.args, ...frontendArgs(fleet.nats.url, uds, ['--log-file', logFile])],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    fleet.children.push(child);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const lines = () =>
      existsSync(logFile)
        ? readFileSync(logFile, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as Line)
        : [];
    await eventually(() => lines().some((l) => l.msg === 'frontend ready'), 'frontend ready in the log file');
    assert.deepEqual(upstreamWarnings(lines()), [...server.replaced].sort());

    const { head, client } = await eventually(async () => {
      const attempt = await connectOnce({ path: uds }, connectRequest(echo.address));
      if (attempt.head.status === 200) return attempt;
      attempt.client.socket.destroy();
      return undefined;
    }, 'CONNECT through the frontend');
    assert.equal(head.status, 200);
    client.socket.destroy();
    await eventually(() => lines().some((l) => l.msg === 'tunnel open'), 'the tunnel in the log file');
    assert.equal(stderr, '', 'below ERROR nothing goes to stderr (klog --stderrthreshold)');
  });
});

describe('--enable-profiling serves CPU profiles and heap snapshots on the admin port only', () => {
  const fleet = new Fleet();
  let profiled: Line[];
  let plain: Line[];
  let profiledHealthPort: number;

  before(async () => {
    await fleet.startNats();
    ({ logs: profiled, healthPort: profiledHealthPort } = await fleet.spawnAgent(['--enable-profiling']));
    ({ logs: plain } = await fleet.spawnAgent());
  });
  after(() => fleet.stop());

  it('a CPU profile of the asked length', async () => {
    const started = Date.now();
    const { status, body } = await fetchText(adminPort(profiled), '/debug/pprof/profile?seconds=1');
    assert.equal(status, 200);
    assert.ok(Date.now() - started >= 900, 'it profiled for about a second');
    const profile = JSON.parse(body) as { nodes: unknown[]; startTime: number; endTime: number };
    assert.ok(profile.nodes.length > 0);
    assert.ok(profile.endTime > profile.startTime);
  });

  it('a heap snapshot', async () => {
    const { status, body } = await fetchText(adminPort(profiled), '/debug/pprof/heap');
    assert.equal(status, 200);
    const snapshot = JSON.parse(body) as { snapshot: { node_count: number } };
    assert.ok(snapshot.snapshot.node_count > 0);
  });

  it('bad lengths are refused; nothing on the health port nor without the flag', async () => {
    assert.equal((await fetchText(adminPort(profiled), '/debug/pprof/profile?seconds=0')).status, 400);
    assert.equal((await fetchText(profiledHealthPort, '/debug/pprof/heap')).status, 404);
    assert.equal((await fetchText(adminPort(plain), '/debug/pprof/profile?seconds=1')).status, 404);
    assert.equal((await fetchText(adminPort(plain), '/debug/pprof/heap')).status, 404);
  });
});

/** A TCP relay in front of nats-server that counts the PINGs its client sends. */
async function pingCountingRelay(
  natsPort: number,
): Promise<{ url: string; pings(): number; server: Server }> {
  let pings = 0;
  const server = createServer((client) => {
    const upstream = connect(natsPort, '127.0.0.1');
    let pending = '';
    client.on('data', (chunk: Buffer) => {
      pending += chunk.toString('latin1');
      const lines = pending.split('\r\n');
      pending = lines.pop() ?? '';
      pings += lines.filter((line) => line === 'PING').length;
      upstream.write(chunk);
    });
    upstream.pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { url: `nats://127.0.0.1:${port}`, pings: () => pings, server };
}

describe('--keepalive-time is the NATS ping interval (never rarer than 5 s)', () => {
  const fleet = new Fleet();
  const relays: Server[] = [];

  before(() => fleet.startNats());
  after(async () => {
    await fleet.stop();
    for (const relay of relays) relay.close();
  });

  it("1s pings every second; upstream's 1h keeps our 5 s", async () => {
    const natsPort = Number(new URL(fleet.nats.url).port);
    const fast = await pingCountingRelay(natsPort);
    const upstreamDefault = await pingCountingRelay(natsPort);
    relays.push(fast.server, upstreamDefault.server);
    await Promise.all([
      fleet.spawn(['agent', ...agentArgs(fast.url), '--keepalive-time=1s'], 'agent ready'),
      fleet.spawn(['agent', ...agentArgs(upstreamDefault.url), '--keepalive-time=1h'], 'agent ready'),
    ]);
    const before = [fast.pings(), upstreamDefault.pings()];
    await new Promise((resolve) => setTimeout(resolve, 4500));
    const fastPings = fast.pings() - before[0]!;
    const defaultPings = upstreamDefault.pings() - before[1]!;
    assert.ok(fastPings >= 3, `--keepalive-time=1s: ${fastPings} pings in 4.5 s`);
    assert.ok(defaultPings <= 1, `--keepalive-time=1h: ${defaultPings} pings in 4.5 s (5 s interval)`);
  });
});

describe("--frontend-keepalive-time is the gRPC door's keepalive toward kube-apiserver", () => {
  const fleet = new Fleet();
  before(() => fleet.startNats());
  after(() => fleet.stop());

  /** HTTP/2 PINGs the frontend sends to one client connection in `ms`. */
  async function pingsIn(uds: string, ms: number): Promise<number> {
    const session = http2Connect('http://localhost', { createConnection: () => connect(uds) });
    let pings = 0;
    session.on('ping', () => pings++);
    session.on('error', () => {});
    await new Promise((resolve) => setTimeout(resolve, ms));
    session.destroy();
    return pings;
  }

  it('1s pings every second; the default (30 s) does not within seconds', async () => {
    const fast = fleet.socketPath();
    const regular = fleet.socketPath();
    await Promise.all([
      fleet.spawnFrontend(fast, ['--frontend-keepalive-time=1s']),
      fleet.spawnFrontend(regular),
    ]);
    const [fastPings, regularPings] = await Promise.all([pingsIn(fast, 3500), pingsIn(regular, 3500)]);
    assert.ok(fastPings >= 2, `--frontend-keepalive-time=1s: ${fastPings} pings in 3.5 s`);
    assert.equal(regularPings, 0);
  });
});
