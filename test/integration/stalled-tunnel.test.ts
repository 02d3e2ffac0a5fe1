/**
 * The stalled-tunnel timeout (trust issue, item 4), with real processes: a
 * frontend per door and an agent, each with --stalled-tunnel-timeout 1500ms.
 *
 * - A CONNECT client fills a tunnel whose destination never reads, then
 *   leaves: its FIN sits behind the bytes the door stopped reading, so only
 *   the timeout lets go. Both ends abort (the destination is reset), count
 *   it and log it with the tunnel id.
 * - A gRPC client stops reading a destination that keeps writing: the client
 *   gets the queued bytes, then CLOSE_RSP with KNATS_TUNNEL_STALLED.
 * - Idle tunnels with nothing waiting are kept far past the timeout.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { endedByReset } from '../../broker/tunnel/socket-reset.js';
import { defaultTunnelHostTiming } from '../../broker/tunnel/tunnel-host.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { connectRequest, DoorClient } from '../helpers/connect-client.js';
import { blackholeServer, type Destination, echoServer } from '../helpers/destinations.js';
import { agentArgs, eventually, Fleet, fetchText, frontendArgs } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const TIMEOUT = '1500ms';
const TIMEOUT_MS = 1500;

type Spawned = { child: ChildProcess; healthPort: number; logs: Record<string, unknown>[] };

async function metric(process: Spawned, name: string): Promise<number> {
  const { body } = await fetchText(process.healthPort, '/metrics');
  let total = 0;
  for (const line of body.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) total += Number(line.split(' ').pop());
  }
  return total;
}

const stalledClosed = 'knats_tunnels_closed_total{reason="KNATS_TUNNEL_STALLED"}';

/** A destination that writes as fast as it can and never reads. */
async function firehose(): Promise<{ address: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const chunk = Buffer.alloc(64 * 1024, 7);
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.pause();
    const pump = () => {
      while (!s.destroyed && s.write(chunk));
    };
    s.on('drain', pump);
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

describe('the stalled-tunnel flag', () => {
  it('defaults to 5m, takes Go durations and its environment variable, 0 turns it off', () => {
    const url = 'nats://127.0.0.1:4222';
    assert.equal(defaultTunnelHostTiming.stalledTimeoutMs, 300_000);
    assert.equal(
      frontendConfig(frontendArgs(url, '/tmp/x.sock'), {}).config.timing.stalledTimeoutMs,
      300_000,
    );
    assert.equal(
      frontendConfig(frontendArgs(url, '/tmp/x.sock', ['--stalled-tunnel-timeout', '0']), {}).config.timing
        .stalledTimeoutMs,
      0,
    );
    assert.equal(
      agentConfig(agentArgs(url), { KNATS_STALLED_TUNNEL_TIMEOUT: '2m30s' }).config.timing.stalledTimeoutMs,
      150_000,
    );
    assert.equal(
      agentConfig(agentArgs(url, ['--stalled-tunnel-timeout=90s']), {}).config.timing.stalledTimeoutMs,
      90_000,
    );
    assert.throws(() => agentConfig(agentArgs(url, ['--stalled-tunnel-timeout', 'soon']), {}));
  });
});

describe('stalled tunnels are let go on both ends; idle ones are kept', () => {
  const fleet = new Fleet();
  const connectUds = fleet.socketPath();
  const grpcUds = fleet.socketPath();
  let connectFrontend: Spawned;
  let grpcFrontend: Spawned;
  let agent: Spawned;
  let echo: Destination;

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
    const flags = ['--stalled-tunnel-timeout', TIMEOUT];
    connectFrontend = await fleet.spawnFrontend(connectUds, ['--mode', 'http-connect', ...flags]);
    grpcFrontend = await fleet.spawnFrontend(grpcUds, flags);
    agent = await fleet.spawnAgent(flags);
    for (const frontend of [connectFrontend, grpcFrontend]) {
      await eventually(
        async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200,
        'frontend ready',
      );
    }
  });

  after(async () => {
    await echo?.close();
    await fleet.stop();
  });

  it('a CONNECT client that filled a tunnel to a destination that never reads, then left, is let go on both ends', async () => {
    const blackhole = await blackholeServer();
    try {
      const stalledBefore =
        (await metric(connectFrontend, 'knats_tunnels_stalled_total')) +
        (await metric(agent, 'knats_tunnels_stalled_total'));
      const client = await DoorClient.open({ path: connectUds });
      await client.write(connectRequest(blackhole.address));
      assert.equal((await client.readHead()).status, 200);
      // More than the window, the socket buffers and the kernel's can hold: the client's writing stalls.
      client.socket.write(randomBytes(16 * 1024 * 1024));
      await eventually(() => blackhole.sockets.size === 1, 'the destination connected');
      await new Promise((r) => setTimeout(r, 500));
      const left = Date.now();
      client.socket.destroy();
      // Its departure cannot be seen behind unread bytes: only the timeout lets go, on both ends.
      await eventually(
        async () =>
          (await metric(connectFrontend, 'knats_open_tunnels')) === 0 &&
          (await metric(agent, 'knats_open_tunnels')) === 0,
        'no tunnel open on the frontend or the agent',
        15_000,
      );
      const tookMs = Date.now() - left;
      console.log(`# stuck CONNECT tunnel let go ${tookMs} ms after its client left (timeout ${TIMEOUT})`);
      assert.ok(tookMs < TIMEOUT_MS + 5000, `let go after ${tookMs} ms`);
      // The destination was reset: it sees so once it reads again.
      const [destination] = [...blackhole.sockets];
      const destinationError = new Promise<string>((resolve) => {
        destination!.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
        // Node reports a reset behind unread data as an end: the kernel tells whether the peer is still there.
        destination!.once('end', () => resolve(endedByReset(destination!) ? 'ECONNRESET' : 'FIN'));
      });
      destination!.resume();
      assert.equal(await destinationError, 'ECONNRESET');
      const stalledAfter =
        (await metric(connectFrontend, 'knats_tunnels_stalled_total')) +
        (await metric(agent, 'knats_tunnels_stalled_total'));
      assert.ok(stalledAfter > stalledBefore, 'counted in knats_tunnels_stalled_total');
      assert.ok((await metric(connectFrontend, stalledClosed)) >= 1, 'closed on the frontend with the code');
      assert.ok((await metric(agent, stalledClosed)) >= 1, 'closed on the agent with the code');
      const lines = [...connectFrontend.logs, ...agent.logs].filter(
        (e) => e.code === 'KNATS_TUNNEL_STALLED' && /tunnel stalled/.test(String(e.msg)),
      );
      assert.ok(lines.length >= 1, 'logged');
      assert.equal(typeof lines[0]!.tunnelId, 'string', 'the log line names the tunnel');
      const tunnelId = lines[0]!.tunnelId;
      assert.equal(
        lines.filter((e) => e.tunnelId === tunnelId && e.msg === lines[0]!.msg).length,
        [connectFrontend, agent].filter((p) =>
          p.logs.some((e) => e.tunnelId === tunnelId && e.msg === lines[0]!.msg),
        ).length,
        'logged once per process that noticed',
      );
    } finally {
      await blackhole.close();
    }
  });

  it('a gRPC client that stops reading gets what was queued, then CLOSE_RSP with KNATS_TUNNEL_STALLED', async () => {
    const hose = await firehose();
    try {
      const client = new ProxyStreamClient(`unix:${grpcUds}`, undefined, {
        'grpc-node.flow_control_window': 65_535,
      });
      const dial = await client.dial(hose.address);
      assert.equal(dial.error, '');
      client.call.pause();
      await new Promise((r) => setTimeout(r, TIMEOUT_MS + 3000));
      client.call.resume();
      const error = await client.waitClosed(dial.connectID, 30_000);
      assert.match(error, /^KNATS_TUNNEL_STALLED: /);
      assert.ok(client.bytesOf(dial.connectID) > 0, 'the bytes queued before the abort were delivered');
      client.close();
      assert.ok((await metric(grpcFrontend, stalledClosed)) >= 1);
    } finally {
      await hose.close();
    }
  });

  it('idle tunnels with nothing waiting are kept well past the timeout, byte-exact', async () => {
    const stalledBefore =
      (await metric(connectFrontend, 'knats_tunnels_stalled_total')) +
      (await metric(grpcFrontend, 'knats_tunnels_stalled_total')) +
      (await metric(agent, 'knats_tunnels_stalled_total'));
    const door = await DoorClient.open({ path: connectUds });
    await door.write(connectRequest(echo.address));
    assert.equal((await door.readHead()).status, 200);
    const grpc = new ProxyStreamClient(`unix:${grpcUds}`);
    const dial = await grpc.dial(echo.address);
    assert.equal(dial.error, '');
    const sent: Buffer[] = [];
    const exchange = async () => {
      const bytes = randomBytes(100);
      sent.push(bytes);
      await door.write(bytes);
      assert.ok((await door.readBytes(bytes.length, 10_000)).equals(bytes));
      await grpc.sendAll(dial.connectID, bytes);
      await grpc.waitBytes(dial.connectID, 100 * sent.length, 10_000);
      assert.ok(grpc.dataOf(dial.connectID).equals(Buffer.concat(sent)));
    };
    await exchange();
    // An idle interactive session: a keystroke now and then, long silences.
    await new Promise((r) => setTimeout(r, 4 * TIMEOUT_MS));
    await exchange();
    await new Promise((r) => setTimeout(r, 2 * TIMEOUT_MS));
    await exchange();
    assert.equal(door.ended, false, 'the CONNECT tunnel is open');
    assert.equal(grpc.closeError(dial.connectID), undefined, 'the gRPC tunnel is open');
    const stalledAfter =
      (await metric(connectFrontend, 'knats_tunnels_stalled_total')) +
      (await metric(grpcFrontend, 'knats_tunnels_stalled_total')) +
      (await metric(agent, 'knats_tunnels_stalled_total'));
    assert.equal(stalledAfter, stalledBefore, 'no idle tunnel was counted as stalled');
    grpc.closeRequest(dial.connectID);
    assert.equal(await grpc.waitClosed(dial.connectID), '');
    grpc.close();
    door.close();
  });
});
