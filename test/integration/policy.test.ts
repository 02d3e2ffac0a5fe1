/**
 * The agent's destination policy and its guard against hostile dial requests,
 * end to end: real nats-server, real frontend and agents, real sockets.
 */
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import { type RunningAgent, startAgent } from '../../agent/agent.js';
import { type BusDialRequest, dialRequestCodec, dialResponseCodec } from '../../broker/wire/bus-messages.js';
import { agentConfig } from '../../cli/config.js';
import { connectOnce, connectRequest } from '../helpers/connect-client.js';
import { type Destination, echoServer, refusedPort } from '../helpers/destinations.js';
import { agentArgs, eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

/** Log entries of an in-process component, to assert on what it logged. */
function captureLogger() {
  const entries: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void entries.push(JSON.parse(line)) });
  return { logger, entries };
}

async function startCapturedAgent(fleet: Fleet, extra: string[]) {
  const { config } = agentConfig(agentArgs(fleet.nats.url, extra), {});
  const { logger, entries } = captureLogger();
  const agent = await startAgent({ ...config, logger });
  fleet.agents.push(agent);
  return { agent, entries };
}

/** An echo server on another loopback address or ::1. */
async function echoOn(
  host: string,
): Promise<{ port: number; close(): Promise<void>; accepted: () => number }> {
  let accepted = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    accepted: () => accepted,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

async function echoThrough(client: ProxyStreamClient, connectID: number, text: string): Promise<void> {
  const before = client.dataOf(connectID).length;
  client.send(connectID, Buffer.from(text));
  await eventually(
    () => client.dataOf(connectID).subarray(before).toString() === text,
    `echo of ${JSON.stringify(text)}`,
  );
}

const DENIED = /^KNATS_DESTINATION_DENIED: /;

describe('destination policy through a real fleet', () => {
  const fleet = new Fleet();
  let echo: Destination;
  let v6Echo: Awaited<ReturnType<typeof echoOn>>;
  let denyLoopback: { agent: RunningAgent; entries: Record<string, unknown>[] };
  let allowList: { agent: RunningAgent; entries: Record<string, unknown>[] };
  let udsDeny: string;
  let udsAllow: string;
  let connectUds: string;
  let otherPort: number;

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
    v6Echo = await echoOn('::1');
    otherPort = await refusedPort();
    // Prefix "deny": everything on 127.0.0.0/8 is denied; ::1 is fine.
    udsDeny = (await fleet.frontend(['--subject-prefix', 'deny', '--backend-dial-timeout', '2s'])).uds;
    connectUds = (
      await fleet.frontend([
        '--subject-prefix',
        'deny',
        '--mode',
        'http-connect',
        '--backend-dial-timeout',
        '2s',
      ])
    ).uds;
    denyLoopback = await startCapturedAgent(fleet, [
      '--subject-prefix',
      'deny',
      '--agent-id',
      'deny-agent',
      '--deny-destinations',
      '127.0.0.0/8',
    ]);
    // Prefix "allow": only the echo port on 127.0.0.0/8 (and 127.0.0.2 denied outright).
    udsAllow = (await fleet.frontend(['--subject-prefix', 'allow', '--backend-dial-timeout', '2s'])).uds;
    allowList = await startCapturedAgent(fleet, [
      '--subject-prefix',
      'allow',
      '--agent-id',
      'allow-agent',
      '--allow-destinations',
      // The range alone does not open loopback: the exact entry does.
      `127.0.0.0/8:${echo.port},127.0.0.1:${echo.port}`,
      '--deny-destinations',
      '127.0.0.2',
    ]);
    for (const agent of fleet.agents) {
      await eventually(
        async () => (await fetchText(agent.healthPort, '/readyz')).status === 200,
        'agent ready',
      );
    }
    for (const fe of fleet.frontends) {
      await eventually(
        async () => (await fetchText(fe.healthPort, '/readyz')).status === 200,
        'frontend ready',
      );
    }
  });
  after(async () => {
    await echo.close();
    await v6Echo.close();
    await fleet.stop();
  });

  it('denies a name that resolves to a denied address (DNS smuggling), before connecting', async () => {
    const client = new ProxyStreamClient(`unix:${udsDeny}`);
    const acceptedBefore = echo.accepted;
    const dial = await client.dial(`localhost:${echo.port}`);
    assert.match(dial.error, DENIED);
    assert.match(
      dial.error,
      /resolves to 127\.0\.0\.1, which matches --deny-destinations entry "127\.0\.0\.0\/8"/,
    );
    // A numeric name getaddrinfo would read as 127.0.0.1 is not a host name at all.
    const numeric = await client.dial(`2130706433:${echo.port}`);
    assert.match(numeric.error, /^KNATS_BAD_ADDRESS: .*not a host name/);
    const literal = await client.dial(echo.address);
    assert.match(literal.error, DENIED);
    assert.equal(echo.accepted, acceptedBefore, 'no connection reached the denied destination');
    client.close();
  });

  it('denies cloud metadata by default, at once, for the IP, its IPv4-mapped form and the names', async () => {
    const client = new ProxyStreamClient(`unix:${udsDeny}`);
    for (const address of [
      '169.254.169.254:80',
      '[::ffff:169.254.169.254]:80',
      '[fd00:ec2::254]:80',
      'metadata.google.internal:80',
      'metadata:80',
    ]) {
      const dial = await client.dial(address);
      assert.match(dial.error, DENIED, address);
      assert.match(dial.error, /metadata/);
      assert.ok(dial.ms < 1000, `${address} denied in ${dial.ms} ms, without a dial attempt`);
    }
    client.close();
  });

  it('lets an allowed destination through on the same agent (::1 is not in 127.0.0.0/8)', async () => {
    const client = new ProxyStreamClient(`unix:${udsDeny}`);
    const dial = await client.dial(`[::1]:${v6Echo.port}`);
    assert.equal(dial.error, '');
    await echoThrough(client, dial.connectID, 'through the policy');
    client.closeRequest(dial.connectID);
    assert.equal(await client.waitClosed(dial.connectID), '');
    client.close();
  });

  it('counts denials as knats_dial_failures_total{reason="denied"} (upstream: unknown) and logs them with the tunnel id', async () => {
    const { body } = await fetchText(denyLoopback.agent.healthPort, '/metrics');
    const match = /knats_dial_failures_total\{reason="denied"[^}]*\} (\d+)/.exec(body);
    assert.ok(match, 'denied counter present');
    assert.ok(Number(match[1]) >= 7, `denied count ${match[1]}`);
    const logged = denyLoopback.entries.filter((e) => e.msg === 'dial denied by destination policy');
    assert.ok(logged.length >= 7);
    assert.ok(logged.every((e) => typeof e.tunnelId === 'string' && e.code === 'KNATS_DESTINATION_DENIED'));
    assert.ok(logged.some((e) => String(e.reason).includes('localhost resolves to 127.0.0.1')));
  });

  it('answers HTTP 403 in connect mode', async () => {
    const { head, body, client } = await connectOnce(
      { path: connectUds },
      connectRequest(`localhost:${echo.port}`),
    );
    assert.equal(head.status, 403, head.statusLine);
    assert.match(body, /KNATS_DESTINATION_DENIED|denied/);
    client.close();
  });

  it('with an allow list: only the listed port passes, deny wins, names resolve to the checked address', async () => {
    const client = new ProxyStreamClient(`unix:${udsAllow}`);
    const ok = await client.dial(echo.address);
    assert.equal(ok.error, '');
    await echoThrough(client, ok.connectID, 'allowed by CIDR and port');
    const byName = await client.dial(`localhost:${echo.port}`);
    assert.equal(byName.error, '', 'localhost resolves into the allowed CIDR');
    await echoThrough(client, byName.connectID, 'allowed by name resolution');

    const otherPortDial = await client.dial(`127.0.0.1:${otherPort}`);
    assert.match(otherPortDial.error, DENIED);
    assert.match(otherPortDial.error, /not in --allow-destinations/);
    const denyWins = await client.dial(`127.0.0.2:${echo.port}`);
    assert.match(denyWins.error, /matches --deny-destinations entry "127.0.0.2"/);
    const outside = await client.dial(`[::1]:${v6Echo.port}`);
    assert.match(outside.error, /not in --allow-destinations/);
    assert.equal(
      allowList.entries.filter((e) => e.msg === 'dial denied by destination policy').length,
      3,
      'each denial logged once',
    );
    client.close();
  });
});

describe('agent: hostile dial requests on the bus', () => {
  const fleet = new Fleet();
  let echo: Destination;
  let agent: RunningAgent;
  let raw: NatsConnection;
  let uds: string;

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
    uds = (await fleet.frontend([])).uds;
    ({ agent } = await startCapturedAgent(fleet, ['--agent-id', 'target']));
    raw = await connect({ servers: fleet.nats.url });
  });
  after(async () => {
    await raw.close();
    await echo.close();
    await fleet.stop();
  });

  const valid = (overrides: Partial<BusDialRequest> = {}): BusDialRequest => ({
    protocolVersion: 1,
    tunnelId: `hostile${Math.random().toString(36).slice(2, 10)}`,
    protocol: 'tcp',
    address: echo.address,
    frontendId: 'attacker',
    initialWindow: 65536,
    dialTimeoutMs: 1000,
    ...overrides,
  });

  const cases: [string, () => Uint8Array, string, RegExp?][] = [
    [
      'garbage bytes',
      () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]),
      'KNATS_MALFORMED_FRAME',
      /malformed dial request/,
    ],
    ['an empty request', () => new Uint8Array(0), 'KNATS_MALFORMED_FRAME', /invalid tunnel id/],
    [
      'a tunnel id with a dot (subject injection)',
      () => dialRequestCodec.encode(valid({ tunnelId: 'a.b' })),
      'KNATS_MALFORMED_FRAME',
      /invalid tunnel id/,
    ],
    [
      'a wildcard tunnel id',
      () => dialRequestCodec.encode(valid({ tunnelId: '>' })),
      'KNATS_MALFORMED_FRAME',
    ],
    [
      'an over-long tunnel id',
      () => dialRequestCodec.encode(valid({ tunnelId: 'x'.repeat(65) })),
      'KNATS_MALFORMED_FRAME',
    ],
    [
      'a bad frontend id',
      () => dialRequestCodec.encode(valid({ frontendId: 'fe.*' })),
      'KNATS_MALFORMED_FRAME',
      /invalid frontend id/,
    ],
    [
      'an oversized address (512 KiB)',
      () => dialRequestCodec.encode(valid({ address: `${'a'.repeat(512 * 1024)}:80` })),
      'KNATS_BAD_ADDRESS',
      /exceeds the limit of 1024/,
    ],
    [
      'an unknown protocol',
      () => dialRequestCodec.encode(valid({ protocol: 'udp' })),
      'KNATS_BAD_ADDRESS',
      /unsupported protocol "udp"/,
    ],
    [
      'protocol_version 0 (incompatible)',
      () => dialRequestCodec.encode(valid({ protocolVersion: 0 })),
      'KNATS_INCOMPATIBLE_PEER',
      /bus protocol 0/,
    ],
    [
      'no port',
      () => dialRequestCodec.encode(valid({ address: '127.0.0.1' })),
      'KNATS_BAD_ADDRESS',
      /missing port/,
    ],
    [
      'port 0',
      () => dialRequestCodec.encode(valid({ address: '127.0.0.1:0' })),
      'KNATS_BAD_ADDRESS',
      /out of range/,
    ],
    [
      'port 65536',
      () => dialRequestCodec.encode(valid({ address: '127.0.0.1:65536' })),
      'KNATS_BAD_ADDRESS',
      /out of range/,
    ],
    [
      'an empty host',
      () => dialRequestCodec.encode(valid({ address: ':80' })),
      'KNATS_BAD_ADDRESS',
      /empty host/,
    ],
  ];

  it('refuses each with a clear code, leaks nothing, and a live tunnel keeps flowing', async () => {
    const client = new ProxyStreamClient(`unix:${uds}`);
    const healthy = await client.dial(echo.address);
    assert.equal(healthy.error, '');
    await echoThrough(client, healthy.connectID, 'before');
    const acceptedBefore = echo.accepted;

    for (const [what, build, code, message] of cases) {
      const msg = await raw.request('knats.dial.agent.target', build(), { timeout: 3000 });
      const rsp = dialResponseCodec.decode(msg.data);
      assert.equal(rsp.errorCode, code, `${what}: ${rsp.errorMessage}`);
      if (message) assert.match(rsp.errorMessage, message, what);
      assert.ok(rsp.errorMessage.length < 300, `${what}: the reply does not echo the payload`);
      assert.ok(rsp.tunnelId.length <= 64, `${what}: no hostile id echoed`);
      await echoThrough(client, healthy.connectID, `after ${what}`);
    }

    // A dial published without a reply subject is dropped: nothing dialed.
    raw.publish('knats.dial.agent.target', dialRequestCodec.encode(valid()));
    await raw.flush();
    await new Promise((r) => setTimeout(r, 200));

    assert.equal(echo.accepted, acceptedBefore, 'no hostile request reached the destination');
    const after = agent.debugState() as { tunnels: number; sockets: number; pendingDials: number };
    assert.deepEqual(
      { tunnels: after.tunnels, sockets: after.sockets, pendingDials: after.pendingDials },
      { tunnels: 1, sockets: 1, pendingDials: 0 },
    );
    const { body } = await fetchText(agent.healthPort, '/metrics');
    assert.match(body, /knats_dial_failures_total\{reason="malformed_frame"[^}]*\} [1-9]/);
    assert.match(body, /knats_dial_failures_total\{reason="bad_address"[^}]*\} [1-9]/);
    assert.match(body, /knats_dial_failures_total\{reason="incompatible_peer"[^}]*\} 1/);
    await echoThrough(client, healthy.connectID, 'still flowing');
    client.closeRequest(healthy.connectID);
    assert.equal(await client.waitClosed(healthy.connectID), '');
    client.close();
  });

  it('refuses a dial that reuses the id of a live tunnel, and the live tunnel is untouched', async () => {
    await eventually(
      () => (agent.debugState() as { tunnels: number }).tunnels === 0,
      'previous tunnel closed',
    );
    const request = valid();
    const first = dialResponseCodec.decode(
      (await raw.request('knats.dial.agent.target', dialRequestCodec.encode(request), { timeout: 3000 }))
        .data,
    );
    assert.equal(first.errorCode, '');
    const again = dialResponseCodec.decode(
      (await raw.request('knats.dial.agent.target', dialRequestCodec.encode(request), { timeout: 3000 }))
        .data,
    );
    assert.equal(again.errorCode, 'KNATS_MALFORMED_FRAME');
    assert.match(again.errorMessage, /reuses a live tunnel id/);
    assert.equal((agent.debugState() as { tunnels: number }).tunnels, 1, 'one tunnel, not two');
    // Nobody confirms it (we are not a frontend): the agent closes it after the confirm timeout.
  });
});
