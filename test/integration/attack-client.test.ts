/**
 * A malicious client against a real frontend, agent and nats-server: it holds
 * only access to a front door (the Unix sockets), and a hostile agent answer
 * is forged on the bus. Every attack must fail with a clear error while a
 * victim tunnel beside it stays byte-exact.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http2 from 'node:http2';
import { createServer, connect as netConnect, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { RunningAgent } from '../../agent/agent.js';
import { dialRequestCodec, dialResponseCodec, PROTOCOL_VERSION } from '../../broker/wire/bus-messages.js';
import { Subjects } from '../../broker/wire/subjects.js';
import { connectOnce, connectRequest, DoorClient } from '../helpers/connect-client.js';
import { type Destination, echoServer, hangingPort } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { besideHealthyTunnel, ProxyStreamClient } from '../helpers/proxy-client.js';

const MiB = 1024 * 1024;
const SECRET = 'loopback-only secret\n';

/** A service only this host can reach: it greets every connection with SECRET. */
async function loopbackSecret(): Promise<{ port: number; accepted: () => number; close(): Promise<void> }> {
  let accepted = 0;
  const servers: Server[] = [];
  const listen = (host: string, port: number) =>
    new Promise<Server>((resolve, reject) => {
      const server = createServer((s) => {
        accepted++;
        s.on('error', () => {});
        s.end(SECRET);
      });
      server.once('error', reject);
      server.listen(port, host, () => resolve(server));
    });
  const v4 = await listen('127.0.0.1', 0);
  const port = (v4.address() as { port: number }).port;
  servers.push(v4);
  // The same port on ::1 too, so [::] would find it.
  servers.push(await listen('::1', port).catch(() => v4));
  return {
    port,
    accepted: () => accepted,
    close: async () => {
      await Promise.all([...new Set(servers)].map((s) => new Promise((r) => s.close(r))));
    },
  };
}

const DENIED = /^KNATS_DESTINATION_DENIED: /;

describe('attacks of a malicious client', () => {
  const fleet = new Fleet();
  let echo: Destination;
  let secret: Awaited<ReturnType<typeof loopbackSecret>>;
  let grpcUds: string;
  let grpcHealthPort: number;
  let connectUds: string;
  let connectHealthPort: number;
  let agent: RunningAgent;
  let clusterAgent: RunningAgent;
  let clusterUds: string;
  let nc: NatsConnection;

  const victimBeside = (attack: () => Promise<void>) =>
    besideHealthyTunnel(`unix:${grpcUds}`, echo.address, attack, 4 * MiB);

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
    secret = await loopbackSecret();
    // Prefix "knats": the helper's loopback entries, and the secret's port denied on loopback.
    agent = await fleet.agent([
      '--dial-timeout',
      '3s',
      '--deny-destinations',
      `127.0.0.0/8:${secret.port},[::1]:${secret.port}`,
    ]);
    // The gRPC door is a process of its own, so its memory can be measured.
    grpcUds = fleet.socketPath();
    ({ healthPort: grpcHealthPort } = await fleet.spawnFrontend(grpcUds, ['--backend-dial-timeout', '4s']));
    const connectFe = await fleet.frontend(['--mode', 'http-connect', '--backend-dial-timeout', '4s']);
    connectUds = connectFe.uds;
    connectHealthPort = connectFe.healthPort;
    // Prefix "cluster": only cluster service names (and the victim's echo) may be dialed.
    clusterAgent = await fleet.agent([
      '--subject-prefix',
      'cluster',
      '--allow-destinations',
      `*.svc.cluster.local,127.0.0.1:${echo.port}`,
    ]);
    clusterUds = (await fleet.frontend(['--subject-prefix', 'cluster', '--mode', 'http-connect'])).uds;
    nc = await connect({ servers: fleet.nats.url });
    for (const port of [grpcHealthPort, connectHealthPort, fleet.frontends[1]!.healthPort]) {
      await eventually(async () => (await fetchText(port, '/readyz')).status === 200, 'frontend ready');
    }
  });
  after(async () => {
    await nc.close();
    await echo.close();
    await secret.close();
    await fleet.stop();
  });

  it("a NUL in the host does not pass --allow-destinations '*.svc.cluster.local'", async () => {
    // The victim is a CONNECT tunnel through the same frontend and agent.
    const victim = await DoorClient.open({ path: clusterUds });
    await victim.write(connectRequest(echo.address));
    assert.equal((await victim.readHead()).status, 200);
    const payload = Buffer.alloc(256 * 1024, 3);
    const echoed = victim.readBytes(payload.length);
    await victim.writeAll(payload);

    for (const host of ['localhost\0.svc.cluster.local', 'localhost\x00\x1b[2J.svc.cluster.local']) {
      const { head, body, client } = await connectOnce(
        { path: clusterUds },
        Buffer.from(connectRequest(`${host}:${secret.port}`), 'latin1'),
      );
      assert.equal(head.status, 400, `${head.statusLine} ${body}`);
      assert.equal(head.headers['x-knats-error'], 'KNATS_BAD_ADDRESS');
      assert.ok(!body.includes(SECRET), 'no byte of the loopback service');
      client.close();
    }
    assert.equal(secret.accepted(), 0, 'nothing connected to the loopback service');
    assert.ok((await echoed).equals(payload), 'the victim tunnel is byte-exact');
    victim.close();
  });

  it('the agent refuses the NUL host on its own too (a dial request straight on the bus)', async () => {
    const reply = await nc.request(
      new Subjects('cluster').dialAgent(clusterAgent.id),
      dialRequestCodec.encode({
        protocolVersion: PROTOCOL_VERSION,
        tunnelId: 'nul-attack-1',
        protocol: 'tcp',
        address: `localhost\0.svc.cluster.local:${secret.port}`,
        frontendId: 'attacker',
        initialWindow: 65536,
        dialTimeoutMs: 1000,
      }),
      { timeout: 5000 },
    );
    const response = dialResponseCodec.decode(reply.data);
    assert.equal(response.errorCode, 'KNATS_BAD_ADDRESS', response.errorMessage);
    assert.equal(secret.accepted(), 0);
  });

  it('0.0.0.0 and [::] are loopback: --deny-destinations 127.0.0.0/8,::1 holds for them', async () => {
    await victimBeside(async () => {
      const client = new ProxyStreamClient(`unix:${grpcUds}`);
      for (const host of ['0.0.0.0', '[::]', '[::ffff:0.0.0.0]', '127.0.0.1', '[::1]']) {
        const dial = await client.dial(`${host}:${secret.port}`);
        assert.match(dial.error, DENIED, host);
        assert.match(dial.error, /matches --deny-destinations entry "(127\.0\.0\.0\/8|\[::1\])/, host);
      }
      client.close();
      const { head } = await connectOnce({ path: connectUds }, connectRequest(`0.0.0.0:${secret.port}`));
      assert.equal(head.status, 403);
    });
    assert.equal(secret.accepted(), 0, 'nothing connected to the loopback service');
  });

  it('metadata and credential endpoints are denied in every form, at once', async () => {
    await victimBeside(async () => {
      const client = new ProxyStreamClient(`unix:${grpcUds}`);
      for (const address of [
        '169.254.169.254:80',
        '[::ffff:169.254.169.254]:80',
        '[::ffff:a9fe:a9fe]:80',
        '[64:ff9b::a9fe:a9fe]:80',
        '[64:ff9b::169.254.169.254]:80',
        '[fd00:ec2::254]:80',
        '169.254.170.2:80',
        '169.254.170.23:80',
        '[fd00:ec2::23]:80',
        '100.100.100.200:80',
        'metadata.google.internal:80',
        'METADATA.google.internal.:80',
        '169.254.1.1:80',
        '[fe80::1]:80',
      ]) {
        const dial = await client.dial(address);
        assert.match(dial.error, DENIED, address);
        assert.ok(dial.ms < 1000, `${address} denied in ${dial.ms} ms, without a dial attempt`);
      }
      client.close();
    });
  });

  it("the agent's own health and admin ports are not a destination, although loopback is allowed", async () => {
    await victimBeside(async () => {
      const client = new ProxyStreamClient(`unix:${grpcUds}`);
      for (const port of [agent.healthPort, agent.adminPort]) {
        for (const host of ['127.0.0.1', '0.0.0.0']) {
          const dial = await client.dial(`${host}:${port}`);
          assert.match(dial.error, DENIED, `${host}:${port}`);
          assert.match(dial.error, /this agent's own address/);
        }
      }
      client.close();
    });
  });

  it('oversized gRPC messages are refused at their length prefix: 8 x 15 MiB do not grow the frontend', async (t) => {
    const rss = async () =>
      Number(
        /process_resident_memory_bytes(?:\{[^}]*\})? (\d+)/.exec(
          (await fetchText(grpcHealthPort, '/metrics')).body,
        )?.[1],
      );
    // The client's own HTTP/2 memory cap (10 MB by default) must not be what stops it.
    const session = http2.connect('http://localhost', {
      createConnection: () => netConnect(grpcUds),
      maxSessionMemory: 1000,
    });
    session.on('error', () => {});
    const before = await rss();
    const body = Buffer.alloc(15 * MiB - 1, 7);
    await victimBeside(async () => {
      const statuses = await Promise.all(
        Array.from({ length: 8 }, async () => {
          const stream = session.request({
            ':method': 'POST',
            ':path': '/ProxyService/Proxy',
            'content-type': 'application/grpc',
            te: 'trailers',
          });
          stream.on('error', () => {});
          const prefix = Buffer.alloc(5);
          prefix.writeUInt32BE(15 * MiB, 1);
          stream.write(prefix);
          stream.write(body);
          // The status, or nothing if the server buffers on (it then takes all 15 MiB).
          const status = await new Promise<{ code?: string; message?: string }>((resolve) => {
            const take = (h: http2.IncomingHttpHeaders) => {
              if (h['grpc-status'] === undefined) return;
              resolve({ code: String(h['grpc-status']), message: String(h['grpc-message'] ?? '') });
            };
            stream.on('response', take);
            stream.on('trailers', take);
            setTimeout(() => resolve({}), 5_000);
          });
          stream.close();
          return status;
        }),
      );
      for (const status of statuses) {
        assert.equal(status.code, '8', `RESOURCE_EXHAUSTED, got ${JSON.stringify(status)}`);
        assert.match(decodeURIComponent(status.message ?? ''), /larger than max \(15728640 vs 4194304\)/);
      }
    });
    const grown = (await rss()) - before;
    session.close();
    t.diagnostic(`frontend RSS ${(before / MiB).toFixed(1)} MiB, grown by ${(grown / MiB).toFixed(1)} MiB`);
    assert.ok(grown < 48 * MiB, `the frontend grew by ${(grown / MiB).toFixed(1)} MiB`);
  });

  it('the gRPC door announces its stream limit in SETTINGS', async () => {
    const session = http2.connect('http://localhost', { createConnection: () => netConnect(grpcUds) });
    const [settings] = (await once(session, 'remoteSettings')) as [http2.Settings];
    assert.equal(settings.maxConcurrentStreams, 1000);
    session.close();
  });

  it('hostile strings in the address come back bounded and escaped', async () => {
    await victimBeside(async () => {
      const client = new ProxyStreamClient(`unix:${grpcUds}`);
      const huge = await client.dial(`${'a'.repeat(1024 * 1024)}:80`);
      assert.match(huge.error, /^KNATS_BAD_ADDRESS: /);
      assert.ok(huge.error.length < 2048, `${huge.error.length} characters echoed`);
      const escapes = await client.dial('evil\x1b]0;owned\x07\x1b[2J.example:80');
      assert.match(escapes.error, /^KNATS_BAD_ADDRESS: .*invalid character/);
      assert.ok(
        [...escapes.error].every((c) => c.charCodeAt(0) >= 0x20),
        'no raw control character',
      );
      client.close();
      const { head } = await connectOnce({ path: connectUds }, connectRequest('evil\x1b[2J.example:80'));
      assert.equal(head.status, 400);
    });
  });

  it("a hostile agent's error code and message reach the client bounded, with a real status", async () => {
    const hanging = await hangingPort();
    const target = `127.0.0.1:${hanging.port}`;
    const message = `\x1b[2J${'x'.repeat(300 * 1024)}`;
    // A forged answer on the bus (this server has no permissions: anyone may read an agent's dials), in the
    // agent's name and faster than the real agent (whose dial to `target` hangs).
    const forged = nc.subscribe(new Subjects('knats').dialAgent(agent.id), {
      callback: (_err, msg) => {
        const request = dialRequestCodec.decode(msg.data);
        if (request.address !== target) return;
        msg.respond(
          dialResponseCodec.encode({
            protocolVersion: PROTOCOL_VERSION,
            tunnelId: request.tunnelId,
            agentId: agent.id,
            errorCode: 'constructor',
            errorMessage: message,
            initialWindow: 0,
          }),
        );
      },
    });
    await nc.flush();
    try {
      await victimBeside(async () => {
        const client = new ProxyStreamClient(`unix:${grpcUds}`);
        const dial = await client.dial(target);
        assert.match(dial.error, /^KNATS_DIAL_FAILED: /);
        assert.ok(dial.error.length < 2048, `${dial.error.length} characters passed on`);
        assert.ok(!dial.error.includes('\x1b'), 'no raw escape sequence');
        client.close();
        const { head } = await connectOnce({ path: connectUds }, connectRequest(target));
        assert.equal(head.status, 502, head.statusLine);
        assert.equal(head.headers['x-knats-error'], 'KNATS_DIAL_FAILED');
      });
      const metrics = (await fetchText(connectHealthPort, '/metrics')).body;
      assert.doesNotMatch(metrics, /reason="undefined"/);
      assert.match(metrics, /dial_failure_count\{reason="error_response"[^}]*\} [1-9]/);
    } finally {
      forged.unsubscribe();
      hanging.close();
    }
  });
});
