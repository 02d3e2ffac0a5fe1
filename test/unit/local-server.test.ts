import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import {
  findNatsServer,
  startLocalCluster,
  startLocalServer,
} from '../../broker/nats-server/local-server.js';

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Subscribes on `sub`, then publishes on `pub` until the message arrives (route interest propagates asynchronously). */
async function roundTrip(sub: NatsConnection, pub: NatsConnection, subject: string, timeoutMs = 10_000) {
  const subscription = sub.subscribe(subject, { max: 1 });
  await sub.flush();
  const received = (async () => {
    for await (const m of subscription) return m.string();
    return undefined;
  })();
  let done = false;
  void received.finally(() => {
    done = true;
  });
  const deadline = Date.now() + timeoutMs;
  while (!done && Date.now() < deadline) {
    pub.publish(subject, 'hello');
    await pub.flush();
    await Promise.race([received, new Promise((resolve) => setTimeout(resolve, 50))]);
  }
  if (!done) subscription.unsubscribe();
  return received;
}

describe('local nats-server launcher', () => {
  it('starts a server on a free port, carries a message, and stops cleanly', async () => {
    const server = await startLocalServer();
    assert.match(server.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
    assert.ok(server.port > 0);
    assert.ok(isAlive(server.pid));
    const stateDir = path.dirname(server.configPath);
    assert.ok(existsSync(server.configPath));

    const nc = await connect({ servers: server.url });
    try {
      assert.equal(await roundTrip(nc, nc, 'knats.test.one'), 'hello');
    } finally {
      await nc.close();
    }

    await server.stop();
    assert.equal(isAlive(server.pid), false, 'nats-server process is gone');
    assert.throws(() => process.kill(server.pid, 0));
    assert.equal(existsSync(stateDir), false, 'temp dir removed');
    await server.stop(); // idempotent
  });

  it('kill() ends the server at once and stop() still cleans up', async () => {
    const server = await startLocalServer();
    server.kill();
    assert.equal(await server.exited, null);
    await server.stop();
    assert.equal(isAlive(server.pid), false);
    assert.equal(existsSync(path.dirname(server.configPath)), false);
  });

  it('findNatsServer fails clearly when nats-server cannot be found', () => {
    assert.throws(
      () => findNatsServer({ NATS_SERVER_BIN: '/nonexistent/nats-server', PATH: '' }),
      (err: unknown) =>
        err instanceof KnatsError &&
        err.code === ErrorCode.NatsServer &&
        /NATS_SERVER_BIN/.test(err.message) &&
        /apt-get install nats-server/.test(err.message),
    );
  });

  it('startLocalServer rejects with the stderr tail when the server cannot start', async () => {
    await assert.rejects(
      startLocalServer({ extraConfig: 'this is { not valid' }),
      (err: unknown) => err instanceof KnatsError && err.code === ErrorCode.NatsServer,
    );
  });

  it('startLocalCluster(3) forms routes: a message published on server 2 reaches server 0', async () => {
    const servers = await startLocalCluster(3);
    assert.equal(servers.length, 3);
    assert.equal(new Set(servers.map((s) => s.port)).size, 3);
    const [first, , third] = servers;
    const nc0 = await connect({ servers: first!.url });
    const nc2 = await connect({ servers: third!.url });
    try {
      assert.equal(await roundTrip(nc0, nc2, 'knats.test.routed'), 'hello');
    } finally {
      await Promise.all([nc0.close(), nc2.close()]);
      await Promise.all(servers.map((s) => s.stop()));
    }
    for (const s of servers) assert.equal(isAlive(s.pid), false);
  });
});
