/**
 * The HTTP CONNECT front door on a Unix socket, against a real nats-server,
 * a real agent and real destinations: curl (through socat, as curl does not
 * send CONNECT over a Unix socket), every status code provoked for real,
 * bytes after the header, 8 MiB byte-exact both ways, hostile clients beside
 * a healthy tunnel, and the socket file's hygiene.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { chmodSync, lstatSync, statSync, writeFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { createLogger, silentLogger } from '../../broker/logging.js';
import { freePort } from '../../broker/nats-server/local-server.js';
import { defaultCreditSettings } from '../../broker/tunnel/credit.js';
import { frontendConfig } from '../../cli/config.js';
import { type FrontendConfig, type RunningFrontend, startFrontend } from '../../frontend/frontend.js';
import { connectOnce, connectRequest, DoorClient } from '../helpers/connect-client.js';
import {
  type Destination,
  echoServer,
  hangingPort,
  httpServer,
  randomBytesSeeded,
  refusedPort,
  sha256,
  shaServer,
} from '../helpers/destinations.js';
import { agentArgs, cliPath, eventually, Fleet, fetchText, metric } from '../helpers/fleet.js';

const run = promisify(execFile);

type TestFrontend = RunningFrontend & { uds: string };

/** An in-process frontend in --mode http-connect on a fresh socket; `overrides` set what has no flag. */
async function connectFrontend(
  fleet: Fleet,
  extra: string[] = [],
  overrides: Partial<FrontendConfig> = {},
): Promise<TestFrontend> {
  const uds = fleet.socketPath();
  const { config } = frontendConfig(
    [
      '--nats-url',
      fleet.nats.url,
      '--mode',
      'http-connect',
      '--uds-name',
      uds,
      '--health-port',
      '0',
      '--admin-port',
      '0',
      ...extra,
    ],
    {},
  );
  const logger = process.env.KNATS_TEST_LOG
    ? createLogger({ name: 'frontend-connect', level: 'debug' })
    : silentLogger();
  const frontend = await startFrontend({ ...config, ...overrides, logger });
  fleet.frontends.push(frontend);
  return Object.assign(frontend, { uds });
}

/** socat from a loopback port to the frontend's Unix socket (curl cannot CONNECT over a Unix socket). */
async function socatBridge(uds: string): Promise<{ port: number; child: ChildProcess }> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const child = spawn(
      'socat',
      [`TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, `UNIX-CONNECT:${uds}`],
      {
        stdio: 'ignore',
      },
    );
    const up = await eventually(
      () =>
        child.exitCode !== null
          ? 'exited'
          : new Promise<string | false>((resolve) => {
              const s = connect(port, '127.0.0.1');
              s.once('connect', () => {
                s.destroy();
                resolve('up');
              });
              s.once('error', () => resolve(false));
            }),
      'socat listening',
      5000,
    );
    if (up === 'up') return { port, child };
    if (attempt > 3) throw new Error('socat did not start');
  }
}

const PREFIX = 'konnectivity_network_proxy_server_';

describe('HTTP CONNECT over a Unix socket', () => {
  const fleet = new Fleet();
  let fe: TestFrontend;
  let web: Destination;
  let echo: Destination;
  const children: ChildProcess[] = [];

  before(async () => {
    await fleet.startNats();
    fe = await connectFrontend(fleet, ['--backend-dial-timeout', '1s'], {
      headerTimeoutMs: 1000,
    });
    await fleet.agent(['--dial-timeout', '1s', '--deny-destinations', '127.0.0.2']);
    web = await httpServer('web');
    echo = await echoServer();
    await eventually(
      async () => (await fetchText(fe.healthPort, '/readyz')).status === 200,
      'frontend ready',
    );
  });
  after(async () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    await web.close();
    await echo.close();
    await fleet.stop();
  });

  it('serves curl through socat: 200 only after the dial, then the page', async () => {
    const bridge = await socatBridge(fe.uds);
    children.push(bridge.child);
    const { stdout } = await run('curl', [
      '-sS',
      '--max-time',
      '10',
      '--proxytunnel',
      '--proxy',
      `http://127.0.0.1:${bridge.port}`,
      '-w',
      '\n%{http_connect} %{http_code}',
      `http://127.0.0.1:${web.port}/via-uds`,
    ]);
    assert.equal(stdout, 'web /via-uds\n200 200');
    bridge.child.kill('SIGKILL');
  });

  it('answers 200 Connection Established with nothing else, and keeps bytes sent after the header', async () => {
    const client = await DoorClient.open({ path: fe.uds });
    // Header and payload in ONE write: the payload must reach the destination, in order.
    const payload = Buffer.from('first bytes after the header\n');
    await client.write(Buffer.concat([Buffer.from(connectRequest(echo.address)), payload]));
    const exact = Buffer.concat([Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n'), payload]);
    assert.deepEqual(await client.readBytes(exact.length), exact);
    await client.write('more\n');
    assert.equal((await client.readBytes(5)).toString(), 'more\n');
    client.close();
  });

  it('keeps bytes sent after the header with bare-LF line ends and pipelined data', async () => {
    const client = await DoorClient.open({ path: fe.uds });
    const payload = randomBytesSeeded(100_000, 7);
    await client.write(
      Buffer.concat([Buffer.from(`CONNECT ${echo.address} HTTP/1.1\nHost: x\n\n`), payload]),
    );
    const head = await client.readHead();
    assert.equal(head.status, 200);
    assert.equal(sha256(await client.readBytes(payload.length)), sha256(payload));
    client.close();
  });

  it('parses a header that arrives in small pieces, payload straight after it', async () => {
    const client = await DoorClient.open({ path: fe.uds });
    client.socket.setNoDelay(true);
    const bytes = Buffer.from(`${connectRequest(echo.address, `X-Pad: ${'p'.repeat(6000)}\r\n`)}tail`);
    for (let off = 0; off < bytes.length; off += 97) {
      await client.write(bytes.subarray(off, off + 97));
      if (off % (97 * 10) === 0) await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal((await client.readHead()).status, 200);
    assert.equal((await client.readBytes(4)).toString(), 'tail');
    client.close();
  });

  it('moves 8 MiB up and 8 MiB down byte-exact', async () => {
    const up = randomBytesSeeded(8 * 1024 * 1024, 11);
    const down = randomBytesSeeded(8 * 1024 * 1024, 12);
    const dest = await shaServer(up.length, down);
    const client = await DoorClient.open({ path: fe.uds });
    await client.write(connectRequest(dest.address));
    assert.equal((await client.readHead()).status, 200);
    await client.writeAll(up);
    const digest = await client.readBytes(32);
    assert.equal(digest.toString('hex'), sha256(up), 'upload digest');
    const got = await client.readBytes(down.length);
    assert.equal(sha256(got), sha256(down), 'download digest');
    await client.readToEnd();
    await dest.close();
  });

  describe('status codes, each provoked for real', () => {
    const cases: {
      name: string;
      address: () => Promise<string> | string;
      status: number;
      code?: string;
      body: RegExp;
    }[] = [
      {
        name: 'refused port -> 502',
        address: async () => `127.0.0.1:${await refusedPort()}`,
        status: 502,
        code: 'KNATS_DIAL_REFUSED',
        body: /refused/,
      },
      {
        name: 'unreachable address -> 502',
        address: () => '255.255.255.255:80',
        status: 502,
        code: 'KNATS_DIAL_UNREACHABLE',
        body: /unreachable/,
      },
      {
        name: 'unresolvable name -> 502',
        address: () => 'no-such-host.invalid:80',
        status: 502,
        code: 'KNATS_DIAL_DNS',
        body: /not resolved|ENOTFOUND/,
      },
      {
        name: 'destination denied by the agent policy -> 403',
        address: () => '127.0.0.2:80',
        status: 403,
        code: 'KNATS_DESTINATION_DENIED',
        body: /matches --deny-destinations entry "127\.0\.0\.2"/,
      },
      {
        name: 'no port -> 400',
        address: () => '127.0.0.1',
        status: 400,
        code: 'KNATS_BAD_ADDRESS',
        body: /missing port/,
      },
      {
        name: 'port 0 -> 400',
        address: () => '127.0.0.1:0',
        status: 400,
        code: 'KNATS_BAD_ADDRESS',
        body: /out of range/,
      },
      {
        name: 'port 65536 -> 400',
        address: () => '127.0.0.1:65536',
        status: 400,
        code: 'KNATS_BAD_ADDRESS',
        body: /out of range/,
      },
      {
        name: 'empty host -> 400',
        address: () => ':80',
        status: 400,
        code: 'KNATS_BAD_ADDRESS',
        body: /empty host/,
      },
    ];
    for (const c of cases) {
      it(c.name, async () => {
        const address = await c.address();
        const { head, body } = await connectOnce({ path: fe.uds }, connectRequest(address));
        assert.equal(head.status, c.status, `${head.statusLine}: ${body}`);
        assert.equal(head.headers.connection, 'close');
        assert.equal(head.headers['content-type'], 'text/plain; charset=utf-8');
        if (c.code) assert.equal(head.headers['x-knats-error'], c.code);
        assert.match(body, c.body);
        assert.equal(Number(head.headers['content-length']), Buffer.byteLength(body));
      });
    }

    it('a dial that hangs -> 504 after --backend-dial-timeout', async () => {
      const hanging = await hangingPort();
      try {
        const started = Date.now();
        const { head, body } = await connectOnce(
          { path: fe.uds },
          connectRequest(`127.0.0.1:${hanging.port}`),
        );
        const ms = Date.now() - started;
        assert.equal(head.status, 504, body);
        assert.equal(head.statusLine, 'HTTP/1.1 504 Gateway Timeout');
        assert.equal(head.headers['x-knats-error'], 'KNATS_DIAL_TIMEOUT');
        assert.ok(ms >= 900 && ms < 5000, `timed out after ${ms} ms`);
      } finally {
        hanging.close();
      }
    });

    it('no agent -> 500 "currently no tunnels available", in milliseconds', async () => {
      const lonely = await connectFrontend(fleet, ['--subject-prefix', 'nobody-here']);
      const started = Date.now();
      const { head, body } = await connectOnce({ path: lonely.uds }, connectRequest(web.address));
      const ms = Date.now() - started;
      assert.equal(head.statusLine, 'HTTP/1.1 500 Internal Server Error');
      assert.match(body, /^currently no tunnels available/);
      assert.equal(head.headers['x-knats-error'], 'KNATS_NO_AGENT');
      assert.ok(ms < 500, `no-agent answer took ${ms} ms`);
      assert.equal(await metric(lonely.healthPort, `${PREFIX}dial_failure_count{reason="no_agent"}`), 1);
      await lonely.stop({ immediate: true });
    });

    it('agent out of file descriptors -> 503', async () => {
      // A real agent process whose fd limit is low: each open tunnel holds one of its fds.
      const child = spawn(
        'sh',
        [
          '-c',
          `ulimit -n 64 && exec "${process.execPath}" "${cliPath}" agent ` +
            agentArgs(fleet.nats.url, ['--subject-prefix', 'fds'])
              .map((arg) => `'${arg}'`)
              .join(' '),
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      fleet.children.push(child);
      let log = '';
      await eventually(() => {
        log += child.stderr!.read()?.toString() ?? '';
        return log.includes('"agent ready"');
      }, `fd-limited agent ready: ${log}`);
      const lowFe = await connectFrontend(fleet, ['--subject-prefix', 'fds']);
      await eventually(async () => (await fetchText(lowFe.healthPort, '/readyz')).status === 200, 'ready');
      const open: DoorClient[] = [];
      let refusal: { status: number; code?: string; body: string } | undefined;
      try {
        for (let i = 0; i < 100 && !refusal; i++) {
          const client = await DoorClient.open({ path: lowFe.uds });
          await client.write(connectRequest(echo.address));
          const head = await client.readHead();
          if (head.status === 200) open.push(client);
          else
            refusal = {
              status: head.status,
              code: head.headers['x-knats-error'],
              body: (await client.readToEnd()).toString(),
            };
        }
      } finally {
        for (const client of open) client.close();
      }
      assert.ok(refusal, 'the agent ran out of file descriptors within 100 tunnels');
      assert.equal(refusal.status, 503, refusal.body);
      assert.equal(refusal.code, 'KNATS_AGENT_OUT_OF_FDS');
      assert.match(refusal.body, /out of file descriptors/);
      assert.ok(open.length > 5, `${open.length} tunnels were open before the limit`);
      child.kill('SIGKILL');
      await lowFe.stop({ immediate: true });
    });

    it('not CONNECT -> 405 with upstream text', async () => {
      const { head, body } = await connectOnce(
        { path: fe.uds },
        `GET http://${web.address}/ HTTP/1.1\r\nHost: ${web.address}\r\n\r\n`,
      );
      assert.equal(head.statusLine, 'HTTP/1.1 405 Method Not Allowed');
      assert.equal(head.headers.allow, 'CONNECT');
      assert.equal(body, 'this proxy only supports CONNECT passthrough\n');
    });

    it('counts every failure by reason', async () => {
      const value = (reason: string) =>
        metric(fe.healthPort, `knats_dial_failures_total{reason="${reason}"}`);
      assert.ok((await value('refused')) >= 1);
      assert.ok((await value('unreachable')) >= 1);
      assert.ok((await value('dns')) >= 1);
      assert.ok((await value('denied')) >= 1);
      assert.ok((await value('bad_address')) >= 4);
      assert.ok((await value('backend_dial_timeout')) >= 1);
    });
  });

  it('refuses hostile clients with their own error while a healthy tunnel completes', async () => {
    const up = randomBytesSeeded(8 * 1024 * 1024, 21);
    const down = randomBytesSeeded(8 * 1024 * 1024, 22);
    const dest = await shaServer(up.length, down);
    const healthy = (async () => {
      const client = await DoorClient.open({ path: fe.uds });
      await client.write(connectRequest(dest.address));
      assert.equal((await client.readHead()).status, 200);
      await client.writeAll(up);
      assert.equal((await client.readBytes(32)).toString('hex'), sha256(up));
      assert.equal(sha256(await client.readBytes(down.length)), sha256(down));
      client.close();
    })();

    const hostile = async (send: (c: DoorClient) => Promise<void>) => {
      const client = await DoorClient.open({ path: fe.uds });
      await send(client);
      const head = await client.readHead();
      const body = (await client.readToEnd()).toString();
      return { head, body };
    };
    const [slowloris, oversized, garbage, http2, badHeader, binary] = await Promise.all([
      // Slowloris: a header that never ends, dribbled byte by byte.
      hostile(async (c) => {
        const text = connectRequest(echo.address).slice(0, -2);
        for (const ch of text.slice(0, 20)) {
          if (c.ended) break;
          await c.write(ch).catch(() => {});
          await new Promise((r) => setTimeout(r, 100));
        }
      }),
      hostile((c) => c.write(connectRequest(echo.address, `X-Big: ${'a'.repeat(20 * 1024)}\r\n`))),
      hostile((c) => c.write('garbage garbage\r\n\r\n')),
      hostile((c) => c.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')),
      hostile((c) => c.write(`CONNECT ${echo.address} HTTP/1.1\r\n no colon folded line\r\n\r\n`)),
      hostile((c) => c.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x10, 0x0d, 0x0a, 0x0d, 0x0a]))),
    ]);
    assert.equal(slowloris.head.status, 408);
    assert.match(slowloris.body, /not received within 1000 ms/);
    assert.equal(oversized.head.status, 431);
    assert.equal(garbage.head.status, 400);
    assert.match(garbage.body, /malformed request line/);
    assert.equal(http2.head.status, 505);
    assert.equal(badHeader.head.status, 400);
    assert.match(badHeader.body, /malformed header line/);
    assert.equal(binary.head.status, 400);
    await healthy;
    await dest.close();
    assert.ok(
      (await metric(
        fe.healthPort,
        'knats_client_errors_total{segment="from_client",reason="header_timeout"}',
      )) >= 1,
    );
  });

  it('a client that stops reading stalls only its own tunnel, within its window', async () => {
    const big = randomBytesSeeded(32 * 1024 * 1024, 31);
    const flood = await tcpSource(big);
    const stuck = await DoorClient.open({ path: fe.uds });
    await stuck.write(connectRequest(flood.address));
    assert.equal((await stuck.readHead()).status, 200);
    stuck.socket.pause();
    // Meanwhile another tunnel on the same frontend and agent moves its bytes.
    const client = await DoorClient.open({ path: fe.uds });
    await client.write(connectRequest(echo.address));
    assert.equal((await client.readHead()).status, 200);
    const data = randomBytesSeeded(4 * 1024 * 1024, 32);
    const echoed = client.readBytes(data.length);
    await client.writeAll(data);
    assert.equal(sha256(await echoed), sha256(data));
    const state = fe.debugState() as { maxBuffered: { in: number; out: number } };
    const window = defaultCreditSettings.window;
    assert.ok(state.maxBuffered.in <= window, `frontend buffered ${state.maxBuffered.in} > window ${window}`);
    stuck.socket.resume();
    assert.equal(sha256(await stuck.readBytes(big.length)), sha256(big));
    stuck.close();
    client.close();
    await flood.close();
  });

  it('leaves nothing behind: tunnels, connections, pending dials, gauges', async () => {
    await eventually(() => {
      const state = fe.debugState() as { tunnels: number; httpConnections: number; pendingDials: number };
      return state.tunnels === 0 && state.httpConnections === 0 && state.pendingDials === 0;
    }, 'frontend idle');
    assert.equal(await metric(fe.healthPort, `${PREFIX}http_connections`), 0);
    assert.equal(await metric(fe.healthPort, `${PREFIX}established_connections`), 0);
    assert.equal(await metric(fe.healthPort, `${PREFIX}pending_backend_dials`), 0);
    assert.ok((await metric(fe.healthPort, `${PREFIX}dial_duration_seconds_count`)) >= 4);
  });
});

/** Sends `data` to whoever connects, then closes. */
async function tcpSource(data: Buffer): Promise<{ address: string; close(): Promise<void> }> {
  const server = createServer((s) => s.end(data));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    address: `127.0.0.1:${port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('Unix socket hygiene (HTTP CONNECT)', () => {
  const fleet = new Fleet();

  before(async () => {
    await fleet.startNats();
  });
  after(async () => {
    await fleet.stop();
  });

  /** A socket file nobody listens on, as a crashed (kill -9) process leaves it. */
  function staleSocket(path: string): void {
    execFileSync('python3', [
      '-c',
      `import socket;s=socket.socket(socket.AF_UNIX);s.bind(${JSON.stringify(path)})`,
    ]);
    assert.ok(lstatSync(path).isSocket());
  }

  it('creates the socket 0660 by default, or with --uds-mode', async () => {
    const fe = await connectFrontend(fleet);
    assert.equal(statSync(fe.uds).mode & 0o777, 0o660);
    const strict = await connectFrontend(fleet, ['--uds-mode', '0600']);
    assert.equal(statSync(strict.uds).mode & 0o777, 0o600);
    await Promise.all([fe.stop({ immediate: true }), strict.stop({ immediate: true })]);
    assert.throws(() => lstatSync(fe.uds), /ENOENT/, 'the socket file is removed at stop');
  });

  it('a stale socket file never blocks startup, with --delete-existing-uds-file true or false', async () => {
    for (const flag of ['true', 'false']) {
      const path = fleet.socketPath();
      staleSocket(path);
      chmodSync(path, 0o777);
      const { config } = frontendConfig(
        [
          '--nats-url',
          fleet.nats.url,
          '--mode',
          'http-connect',
          '--uds-name',
          path,
          `--delete-existing-uds-file=${flag}`,
          '--health-port',
          '0',
          '--admin-port',
          '0',
        ],
        {},
      );
      const fe = await startFrontend({ ...config, logger: silentLogger() });
      fleet.frontends.push(fe);
      assert.equal(statSync(path).mode & 0o777, 0o660);
      const { head } = await connectOnce({ path }, 'GET / HTTP/1.1\r\n\r\n');
      assert.equal(head.status, 405, 'the new socket serves');
      await fe.stop({ immediate: true });
    }
  });

  it('refuses a live socket with --delete-existing-uds-file=false, and never deletes a regular file', async () => {
    const live = await connectFrontend(fleet);
    const base = [
      '--nats-url',
      fleet.nats.url,
      '--mode',
      'http-connect',
      '--health-port',
      '0',
      '--admin-port',
      '0',
    ];
    const { config } = frontendConfig(
      [...base, '--uds-name', live.uds, '--delete-existing-uds-file=false'],
      {},
    );
    await assert.rejects(
      startFrontend({ ...config, logger: silentLogger() }),
      /another process listens on it/,
    );
    const { head } = await connectOnce({ path: live.uds }, 'GET / HTTP/1.1\r\n\r\n');
    assert.equal(head.status, 405, 'the live frontend still serves');

    const file = `${fleet.dir}/not-a-socket`;
    writeFileSync(file, 'precious');
    const regular = frontendConfig([...base, '--uds-name', file], {}).config;
    await assert.rejects(startFrontend({ ...regular, logger: silentLogger() }), /is not a socket/);
    assert.equal(statSync(file).size, 8);
  });
});
