/**
 * Identity on the bus, pure parts: heartbeat subjects, the claims token of
 * granted identifiers, the permissions that bind both to credentials, the
 * expiry clamp, and what `knats status` prints of peer strings.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  BeatRateLimit,
  defaultPresenceSettings,
  presenceLimits,
  silenceAllowedMs,
} from '../../broker/bus/presence.js';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import {
  agentPermissions,
  frontendPermissions,
  statusPermissions,
} from '../../broker/nats-server/nats-auth.js';
import { canonicalIdentifiers, claimsToken } from '../../broker/wire/identifiers.js';
import { frontendInboxPrefix, isToken, Subjects } from '../../broker/wire/subjects.js';
import { brokerConfig } from '../../cli/broker-command.js';
import { sanitizePeerString } from '../../cli/status-command.js';

const s = new Subjects('knats');

describe('heartbeat subjects', () => {
  it('carry role, id and claims, and only sane ones are read back', () => {
    const subject = s.presence('agent', 'agA', claimsToken('host=a'));
    assert.deepEqual(s.presenceSender(subject), { role: 'agent', id: 'agA', claims: claimsToken('host=a') });
    assert.equal(s.presenceSender('knats.presence'), undefined);
    assert.equal(s.presenceSender('knats.presence.query'), undefined);
    assert.equal(s.presenceSender('knats.presence.admin.x.y'), undefined, 'unknown role');
    assert.equal(s.presenceSender('knats.presence.agent.x.y.z'), undefined, 'extra token');
    assert.equal(s.presenceSender(`knats.presence.agent.${'x'.repeat(129)}.c`), undefined, 'over-long id');
    assert.equal(s.presenceSender('other.presence.agent.x.c'), undefined, 'other prefix');
  });

  it('ids are tokens of bounded length', () => {
    assert.ok(isToken('agent-1_B'));
    for (const bad of ['', 'a b', 'a.b', '*', '>', 'x'.repeat(129), 'é']) assert.ok(!isToken(bad), bad);
    assert.ok(!isToken('x'.repeat(65), 64));
  });
});

describe('claims token', () => {
  it('is the same for the same set of identifiers in any order', () => {
    assert.equal(claimsToken('host=a&cidr=10.0.0.0/8'), claimsToken('cidr=10.0.0.0/8&host=a&host=a'));
    assert.equal(claimsToken('host=a&default-route=false'), claimsToken('host=a'));
    assert.equal(canonicalIdentifiers('ipv4=1.2.3.4&host=b&host=a'), 'host=a&host=b&ipv4=1.2.3.4');
  });

  it('differs for any other claim, and is a subject token', () => {
    const tokens = ['', 'host=a', 'host=b', 'host=a&cidr=0.0.0.0/0', 'default-route=true'].map(claimsToken);
    assert.equal(new Set(tokens).size, tokens.length);
    for (const token of tokens) assert.ok(isToken(token, 64), token);
  });
});

describe('permissions bind identity to credentials', () => {
  it('an agent user heartbeats only as itself, and under its granted claims only', () => {
    const free = agentPermissions('knats', 'agA');
    assert.ok(free.publish.includes('knats.presence.agent.agA.*'));
    assert.ok(!free.publish.some((p) => p === 'knats.presence' || p.includes('presence.frontend')));
    const granted = agentPermissions('knats', 'agA', 'host=a.example&cidr=10.0.0.0/8');
    assert.ok(
      granted.publish.includes(`knats.presence.agent.agA.${claimsToken('cidr=10.0.0.0/8&host=a.example')}`),
    );
    // Dials come only on its own subject: no queue group, whatever it was granted.
    for (const grant of [undefined, 'host=a.example', 'default-route=true']) {
      assert.deepEqual(
        agentPermissions('knats', 'agA', grant).subscribe.filter((s) => s.includes('.dial.')),
        ['knats.dial.agent.agA'],
      );
    }
    assert.throws(
      () => agentPermissions('knats', undefined, 'host=a'),
      (err: unknown) => err instanceof KnatsError && err.code === ErrorCode.BadConfig,
    );
    // The shared user may be granted no identifiers (--require-grants), and then claims none.
    assert.ok(
      agentPermissions('knats', undefined, '').publish.includes(`knats.presence.agent.*.${claimsToken('')}`),
    );
  });

  it('a frontend user reads only its own inbox and heartbeats only as itself; status only reads', () => {
    const fe = frontendPermissions('knats', 'fe1');
    assert.ok(fe.subscribe.includes(`${frontendInboxPrefix('fe1')}.>`));
    assert.ok(!fe.subscribe.includes('_INBOX.>'));
    assert.ok(fe.publish.includes('knats.presence.frontend.fe1.*'));
    assert.deepEqual(statusPermissions('knats'), {
      publish: ['knats.presence.query'],
      subscribe: ['knats.presence.*.*.*'],
      allowResponses: false,
    });
  });

  it('`knats broker config --agent ID?IDENTIFIERS` grants identifiers; a bad grant is a bad flag', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'knats-grant-'));
    try {
      const { config } = await brokerConfig(
        ['--agent', 'agA?host=a.example&cidr=10.0.0.0/8', '--agent', 'agB', '--state-dir', dir],
        {},
      );
      assert.match(config, /# agent agA may claim "host=a\.example&cidr=10\.0\.0\.0\/8"/);
      assert.ok(
        config.includes(`"knats.presence.agent.agA.${claimsToken('host=a.example&cidr=10.0.0.0/8')}"`),
      );
      assert.ok(config.includes('"knats.presence.agent.agB.*"'));
      for (const bad of ['agA?nope=1', 'agA?host=', 'fe?host=a']) {
        const flag = bad.startsWith('fe') ? '--frontend' : '--agent';
        await assert.rejects(
          brokerConfig([flag, bad, '--state-dir', dir], {}),
          (err: unknown) => err instanceof KnatsError && err.code === ErrorCode.BadConfig,
          bad,
        );
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('presence expiry', () => {
  it("clamps the peer's announced interval", () => {
    const settings = defaultPresenceSettings;
    assert.equal(silenceAllowedMs(2000, settings), 6000);
    assert.equal(silenceAllowedMs(0xffffffff, settings), 60_000 * settings.missedBeats);
    assert.equal(silenceAllowedMs(1, settings), 100 * settings.missedBeats);
    assert.equal(silenceAllowedMs(0, settings), settings.heartbeatMs * settings.missedBeats);
  });
});

describe('knats status output', () => {
  it('prints peer strings without terminal controls, cut to a sane length', () => {
    assert.equal(sanitizePeerString('agent-1'), 'agent-1');
    const shown = sanitizePeerString('\u001b]0;pwned\u0007\u009b2J\u202eevil\r\n');
    for (const c of ['\u001b', '\u0007', '\u009b', '\u202e', '\r', '\n']) assert.ok(!shown.includes(c), c);
    assert.match(shown, /\\u\{1b\}\]0;pwned\\u\{7\}/);
    assert.ok(sanitizePeerString('x'.repeat(10_000)).length < 300);
  });
});

describe('heartbeat rate per sender', () => {
  it('lets a burst through, then only the refill rate, per sender', () => {
    const limit = new BeatRateLimit();
    const t0 = 1_000_000;
    let passed = 0;
    for (let i = 0; i < 1000; i++) if (limit.take('agent.a', t0)) passed++;
    assert.equal(passed, presenceLimits.beatBurst);
    assert.equal(limit.take('agent.b', t0), true, 'another sender has its own bucket');
    assert.equal(limit.take('agent.a', t0 + 1000 / presenceLimits.beatsPerSecond), true, 'refilled');
    assert.equal(limit.take('agent.a', t0 + 1000 / presenceLimits.beatsPerSecond), false);
  });

  it('stays bounded under many senders', () => {
    const limit = new BeatRateLimit();
    for (let i = 0; i < 5 * presenceLimits.maxPeers; i++) limit.take(`agent.x${i}`, i * 1000);
    assert.ok(limit.size <= 2 * presenceLimits.maxPeers);
  });
});
