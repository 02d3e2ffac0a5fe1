/**
 * Mistakes an operator makes at start, and `knats dial` failures: each is one
 * line on stderr naming the flag and the value (exit 2 for configuration, 1
 * at run time), never a stack trace or a third-party line; a live Unix
 * socket is never taken over.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLocalServer } from '../../broker/nats-server/local-server.js';
import { createPki, type Pki } from '../helpers/certs.js';
import {
  type Destination,
  echoServer,
  randomBytesSeeded,
  refusedPort,
  shaServer,
} from '../helpers/destinations.js';
import { agentArgs, cliPath, eventually, Fleet, fetchText, frontendArgs, runCli } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

/**
 * Besides the process's JSON log lines, one line on stderr: no stack frames,
 * no grpc-js `E ...` lines, no Node warnings.
 */
function assertOneLine(stderr: string): void {
  const lines = stderr
    .trimEnd()
    .split('\n')
    .filter((line) => !line.startsWith('{"level":'));
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  assert.doesNotMatch(stderr, /\n\s+at |Unhandled|node:internal|"stack"/);
}

async function busyPort(): Promise<{ port: number; server: Server }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as { port: number }).port, server };
}

describe('start-up errors name the flag and the value', () => {
  const fleet = new Fleet();
  let pki: Pki;
  let deadBus: string;
  before(async () => {
    await fleet.startNats();
    pki = createPki(join(fleet.dir, 'pki'));
    deadBus = `nats://127.0.0.1:${await refusedPort()}`;
  });
  after(() => fleet.stop());

  it('bare knats prints the usage and exits 2', async () => {
    const result = await runCli([]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^knats .*\n\nusage: knats <command>/);
  });

  it('a health port in use: the flag and the port, exit 2, and no socket file left behind', async () => {
    const busy = await busyPort();
    try {
      const agent = await runCli([
        'agent',
        '--nats-url',
        deadBus,
        '--health-server-port',
        String(busy.port),
        '--admin-server-port',
        '0',
      ]);
      assert.equal(agent.code, 2, agent.stderr);
      assertOneLine(agent.stderr);
      assert.match(agent.stderr, new RegExp(`--health-server-port ${busy.port}: .*address already in use`));

      const uds = fleet.socketPath();
      const frontend = await runCli([
        'frontend',
        ...frontendArgs(deadBus, uds, ['--health-port', String(busy.port)]),
      ]);
      assert.equal(frontend.code, 2, frontend.stderr);
      assertOneLine(frontend.stderr);
      assert.match(frontend.stderr, new RegExp(`--health-port ${busy.port}: .*address already in use`));
      assert.equal(existsSync(uds), false, 'no socket file is left behind');
    } finally {
      busy.server.close();
    }
  });

  it('a gRPC TCP port in use: named, without grpc-js noise', async () => {
    const busy = await busyPort();
    try {
      const result = await runCli([
        'frontend',
        '--nats-url',
        fleet.nats.url,
        '--server-port',
        String(busy.port),
        '--server-cert',
        pki.server.cert,
        '--server-key',
        pki.server.key,
        '--server-ca-cert',
        pki.ca.cert,
        '--health-port',
        '0',
        '--admin-port',
        '0',
      ]);
      assert.equal(result.code, 2, result.stderr);
      assertOneLine(result.stderr);
      assert.match(result.stderr, new RegExp(`--server-port ${busy.port} .*EADDRINUSE`));
    } finally {
      busy.server.close();
    }
  });

  it('a socket path over the limit, a missing key flag, a missing certificate or seed file: each named', async () => {
    const long = join(fleet.dir, `${'x'.repeat(120)}.sock`);
    const tooLong = await runCli(['frontend', ...frontendArgs(deadBus, long)]);
    assert.equal(tooLong.code, 2);
    assertOneLine(tooLong.stderr);
    assert.match(
      tooLong.stderr,
      /--uds-name .*: \d+ bytes, over the 10[37]-byte limit of a Unix socket path/,
    );

    const tcp = [
      'frontend',
      '--nats-url',
      deadBus,
      '--server-port',
      '8443',
      '--health-port',
      '0',
      '--admin-port',
      '0',
    ];
    const noKey = await runCli([...tcp, '--server-cert', pki.server.cert, '--server-ca-cert', pki.ca.cert]);
    assert.equal(noKey.code, 2);
    assertOneLine(noKey.stderr);
    assert.match(noKey.stderr, /--server-key: required with --server-port 8443/);

    const missing = join(fleet.dir, 'nope.pem');
    const noFile = await runCli([
      ...tcp,
      '--server-cert',
      missing,
      '--server-key',
      pki.server.key,
      '--server-ca-cert',
      pki.ca.cert,
    ]);
    assert.equal(noFile.code, 2);
    assertOneLine(noFile.stderr);
    assert.ok(noFile.stderr.includes(`--server-cert ${missing}: ENOENT`), noFile.stderr);

    const noSeed = await runCli(['agent', ...agentArgs(deadBus, ['--nats-nkey', missing])]);
    assert.equal(noSeed.code, 2);
    assertOneLine(noSeed.stderr);
    assert.ok(noSeed.stderr.includes(`--nats-nkey ${missing}: cannot read it (ENOENT`), noSeed.stderr);
  });

  it('a --state-dir that cannot be a directory: named, exit 2, and no hang (one under /proc spun forever)', async () => {
    const file = join(fleet.dir, 'a-file');
    writeFileSync(file, 'not a directory');
    for (const stateDir of [join(file, 'state'), '/proc/knats-nonexistent/state']) {
      const result = await runCli(['broker', 'config', '--agent', 'a1', '--state-dir', stateDir]);
      assert.equal(result.code, 2, result.stderr);
      assertOneLine(result.stderr);
      assert.ok(result.stderr.includes(`state directory ${stateDir} (--state-dir): EN`), result.stderr);
    }
  });
});

describe('a live socket is never taken', () => {
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

  for (const mode of ['grpc', 'http-connect']) {
    it(`a second frontend on a ${mode} frontend's --uds-name refuses to start, naming what answers`, async () => {
      const uds = fleet.socketPath();
      const first = await fleet.spawnFrontend(uds, ['--mode', mode]);
      const second = await runCli(['frontend', ...frontendArgs(fleet.nats.url, uds)], { timeoutMs: 10_000 });
      assert.equal(second.code, 2, second.stderr);
      assertOneLine(second.stderr);
      const what = mode === 'grpc' ? 'an HTTP/2 server' : 'an HTTP/1.1 server';
      assert.ok(
        second.stderr.includes(`--uds-name ${uds}: another process listens on it (${what}`),
        second.stderr,
      );
      assert.ok(existsSync(uds), 'the socket is still there');
      await eventually(
        async () => (await fetchText(first.healthPort, '/readyz')).status === 200,
        'first ready',
      );
      if (mode === 'grpc') {
        const client = new ProxyStreamClient(`unix:${uds}`);
        const dial = await client.dial(echo.address);
        assert.equal(dial.error, '', 'the first frontend still serves');
        client.close();
      }
    });
  }
});

describe('knats dial never prints a stack trace', () => {
  const fleet = new Fleet();
  let connectUds: string;
  let grpcUds: string;
  let big: Destination;
  before(async () => {
    await fleet.startNats();
    const connect = await fleet.frontend(['--mode', 'http-connect']);
    const grpc = await fleet.frontend();
    connectUds = connect.uds;
    grpcUds = grpc.uds;
    await fleet.agent();
    await eventually(async () => (await fetchText(grpc.healthPort, '/readyz')).status === 200, 'ready');
    big = await shaServer(0, randomBytesSeeded(16 * 1024 * 1024, 3));
  });
  after(async () => {
    await big.close();
    await fleet.stop();
  });

  it('gRPC mode against a missing socket and against a CONNECT door: one line, exit 1', async () => {
    for (const uds of [join(fleet.dir, 'missing.sock'), connectUds]) {
      const result = await runCli(['dial', '--uds-name', uds, '--timeout', '5s', '127.0.0.1:1']);
      assert.equal(result.code, 1, result.stderr);
      assertOneLine(result.stderr);
      assert.match(result.stderr, new RegExp(`^knats dial: cannot use the frontend at unix:${uds}: `));
    }
  });

  it('a reader that leaves early (| head) ends the dial quietly', async () => {
    const child = spawn(process.execPath, [cliPath, 'dial', '--uds-name', grpcUds, big.address], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.once('data', () => child.stdout.destroy());
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(stderr, '');
    assert.equal(code, 0);
  });
});

describe('secrets', () => {
  const fleet = new Fleet();
  after(() => fleet.stop());

  it('a URL password never reaches a log line or an error message; the reason does', async () => {
    const url = `nats://bob:hunter2@127.0.0.1:${await refusedPort()}`;
    const { logs } = await fleet.spawn(['agent', ...agentArgs(url)], 'health server listening');
    const line = await eventually(() => logs.find((l) => l.kind === 'refused'), 'the refused connection');
    assert.match(String(line.servers), /^nats:\/\/\*\*\*@127\.0\.0\.1:\d+$/);
    assert.doesNotMatch(JSON.stringify(logs), /hunter2/);
    const status = await runCli(['status', '--nats-url', url]);
    assert.equal(status.code, 1);
    assertOneLine(status.stderr);
    assert.match(status.stderr, /nats:\/\/\*\*\*@127\.0\.0\.1:\d+.*refused/);
    assert.doesNotMatch(status.stderr, /hunter2/);
  });

  it('--nats-password-file and --nats-token-file; a secret file readable by others is warned about', async () => {
    const passwordFile = join(fleet.dir, 'password');
    writeFileSync(passwordFile, 'hunter2\n', { mode: 0o600 });
    const tokenFile = join(fleet.dir, 'token');
    writeFileSync(tokenFile, 's3cret-token\n', { mode: 0o644 });
    for (const [auth, flags, warned] of [
      [
        'authorization { user: bob, password: hunter2 }',
        ['--nats-user', 'bob', '--nats-password-file', passwordFile],
        false,
      ],
      ['authorization { token: s3cret-token }', ['--nats-token-file', tokenFile], true],
    ] as const) {
      const nats = await startLocalServer({ extraConfig: auth });
      try {
        const { child, healthPort, logs } = await fleet.spawn(
          ['agent', ...agentArgs(nats.url, [...flags])],
          'agent ready',
        );
        assert.equal((await fetchText(healthPort, '/readyz')).status, 200);
        const warning = logs.find((l) => l.code === 'KNATS_SECRET_FILE_MODE');
        if (warned) {
          assert.ok(warning, 'the 0644 token file is warned about');
          assert.equal(warning.flag, '--nats-token-file');
          assert.equal(warning.mode, '0644');
        } else assert.equal(warning, undefined);
        child.kill('SIGKILL');
      } finally {
        await nats.stop();
      }
    }
  });

  it('/debug/state is served on the admin port only', async () => {
    await fleet.startNats();
    const agent = await fleet.agent();
    assert.equal((await fetchText(agent.healthPort, '/debug/state')).status, 404);
    const state = await fetchText(agent.adminPort, '/debug/state');
    assert.equal(state.status, 200);
    assert.equal(JSON.parse(state.body).role, 'agent');
  });
});
