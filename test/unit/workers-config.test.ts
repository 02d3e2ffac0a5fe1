import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { frontendPermissions, frontendWorkerId } from '../../broker/nats-server/nats-auth.js';
import { brokerConfig } from '../../cli/broker-command.js';
import { frontendConfig } from '../../cli/config.js';

const base = ['--nats-url', 'nats://127.0.0.1:4222', '--uds-name', '/tmp/k.sock'];
const badConfig = (pattern: RegExp) => (err: unknown) =>
  err instanceof KnatsError && err.code === ErrorCode.BadConfig && pattern.test(err.message);

describe('--workers', () => {
  it('defaults to one process; KNATS_WORKERS and the flag set it', () => {
    assert.equal(frontendConfig(base, {}).workers, 1);
    assert.equal(frontendConfig(base, { KNATS_WORKERS: '3' }).workers, 3);
    assert.equal(frontendConfig([...base, '--workers', '2'], { KNATS_WORKERS: '3' }).workers, 2);
  });

  for (const [args, pattern] of [
    [['--workers', '0'], /--workers: between 1 and 64/],
    [['--workers', '65'], /--workers: between 1 and 64/],
    [['--workers', '2', '--server-id', 'x'.repeat(126)], /--server-id with --workers/],
  ] as const) {
    it(`${args.join(' ').slice(0, 40)} -> ${pattern}`, () => {
      assert.throws(() => frontendConfig([...base, ...args], {}), badConfig(pattern));
    });
  }
});

describe('a frontend user with workers', () => {
  it('may be ID and ID-w1..ID-wN, each only for its own frames, inbox and heartbeat', () => {
    const p = frontendPermissions('knats', 'fe', 2);
    for (const id of ['fe', frontendWorkerId('fe', 1), frontendWorkerId('fe', 2)]) {
      assert.ok(p.subscribe.includes(`knats.fe.${id}.*`), id);
      assert.ok(p.subscribe.includes(`_INBOX.fe.${id}.>`), id);
      assert.ok(p.publish.includes(`knats.presence.frontend.${id}.*`), id);
    }
    assert.ok(!p.subscribe.some((s) => s.includes('fe-w3')));
    assert.ok(!p.subscribe.includes('knats.fe.>') && !p.subscribe.includes('_INBOX.>'));
    assert.deepEqual(frontendPermissions('knats', 'fe', 0), frontendPermissions('knats', 'fe'));
  });

  it('`knats broker config --frontend-workers` needs per-frontend users and a sane count', async () => {
    await assert.rejects(
      brokerConfig(['--frontend-workers', '2', '--state-dir', '/tmp/unused'], {}),
      badConfig(/--frontend/),
    );
    await assert.rejects(
      brokerConfig(['--frontend', 'fe', '--frontend-workers', '99', '--state-dir', '/tmp/unused'], {}),
      badConfig(/--frontend-workers: between 0 and 64/),
    );
  });

  it("`knats broker config` never grants one bus id to two users (a --frontend that is another one's worker)", async () => {
    await assert.rejects(
      brokerConfig(
        ['--frontend', 'fe', '--frontend', 'fe-w1', '--frontend-workers', '2', '--state-dir', '/tmp/unused'],
        {},
      ),
      badConfig(/--frontend fe-w1: is also the id of worker 1 of --frontend fe/),
    );
  });
});
