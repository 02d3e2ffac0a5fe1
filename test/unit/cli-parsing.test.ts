import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseDialAddress } from '../../broker/address.js';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { parseAgentIdentifiers } from '../../broker/wire/identifiers.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { parseDuration } from '../../cli/duration.js';

const badConfig = (pattern: RegExp) => (err: unknown) =>
  err instanceof KnatsError && err.code === ErrorCode.BadConfig && pattern.test(err.message);

describe('Go durations', () => {
  for (const [text, ms] of [
    ['0', 0],
    ['500ms', 500],
    ['5s', 5000],
    ['1.5s', 1500],
    ['1m', 60_000],
    ['1h30m', 5_400_000],
    ['250us', 0.25],
  ] as const) {
    it(`${text} = ${ms} ms`, () => assert.equal(parseDuration(text), ms));
  }
  for (const text of ['', '5', 's', '5x', '-1s', '1s ']) {
    it(`rejects ${JSON.stringify(text)}`, () => assert.equal(parseDuration(text), undefined));
  }
});

describe('dial addresses', () => {
  it('parses host:port and [v6]:port', () => {
    assert.deepEqual(parseDialAddress('10.0.0.1:443'), { host: '10.0.0.1', port: 443 });
    assert.deepEqual(parseDialAddress('kubernetes.default.svc:6443'), {
      host: 'kubernetes.default.svc',
      port: 6443,
    });
    assert.deepEqual(parseDialAddress('[fd00::1]:10250'), { host: 'fd00::1', port: 10250 });
  });
  for (const [address, why] of [
    ['host', /missing port/],
    ['host:0', /out of range/],
    ['host:65536', /out of range/],
    ['host:http', /must be a number/],
    [':80', /empty host/],
    ['fd00::1:80', /brackets/],
    ['[fd00::1]80', /ipv6/],
    ['a b:80', /invalid character/],
    [`${'a'.repeat(2000)}:80`, /too long/],
  ] as const) {
    it(`rejects ${JSON.stringify(address.slice(0, 30))}`, () => {
      assert.throws(
        () => parseDialAddress(address),
        (err: unknown) =>
          err instanceof KnatsError && err.code === ErrorCode.BadAddress && why.test(err.message),
      );
    });
  }
});

describe('agent identifiers (upstream query syntax)', () => {
  it('parses repeated keys and default-route', () => {
    const ids = parseAgentIdentifiers(
      'host=node-1&host=node-1.local&ipv4=10.0.0.5&cidr=10.0.0.0/24&default-route=true',
    );
    assert.deepEqual(ids.host, ['node-1', 'node-1.local']);
    assert.deepEqual(ids.ipv4, ['10.0.0.5']);
    assert.deepEqual(ids.cidr, ['10.0.0.0/24']);
    assert.equal(ids.defaultRoute, true);
  });
  it('rejects unknown keys with a clear error', () => {
    assert.throws(() => parseAgentIdentifiers('hostname=x'), badConfig(/unknown key "hostname"/));
  });
});

describe('frontend and agent flags', () => {
  const nats = ['--nats-url', 'nats://127.0.0.1:4222'];
  it('accepts upstream-style flags in both --flag value and --flag=value forms, and KNATS_ variables', () => {
    const { config } = frontendConfig(
      [...nats, '--uds-name=/tmp/k.sock', '--delete-existing-uds-file=false', '--backend-dial-timeout', '2s'],
      { KNATS_SERVER_ID: 'fe-env' },
    );
    assert.equal(config.udsName, '/tmp/k.sock');
    assert.equal(config.deleteExistingUdsFile, false);
    assert.equal(config.backendDialTimeoutMs, 2000);
    assert.equal(config.id, 'fe-env');
    assert.equal(config.healthPort, 8092, 'upstream default health port');
    assert.equal(agentConfig(nats, {}).config.healthPort, 8093, 'upstream default agent health port');
  });
  for (const [args, pattern] of [
    [['--uds-name', '/tmp/x', '--bogus'], /--bogus: unknown flag/],
    [
      ['--uds-name', '/tmp/x', '--backend-dial-timeout', 'soon'],
      /--backend-dial-timeout: expected a duration/,
    ],
    [['--uds-name', '/tmp/x', '--mode', 'socks'], /--mode: must be grpc or http-connect/],
    [[], /--uds-name or --server-port/],
    [['--server-port', '8090'], /--server-ca-cert/],
    [['--uds-name', '/tmp/x', '--proxy-strategies', 'nearest'], /unknown strategy "nearest"/],
    [['--uds-name', '/tmp/x', '--server-id', 'x'.repeat(129)], /--server-id/],
    [['--uds-name', '/tmp/x', '--health-port', '70000'], /--health-port: port 70000 out of range/],
  ] as const) {
    it(`frontend: ${args.join(' ') || '(no door)'} -> ${pattern}`, () => {
      assert.throws(() => frontendConfig([...nats, ...args], {}), badConfig(pattern));
    });
  }
  it('requires --nats-url', () => {
    assert.throws(() => agentConfig([], {}), badConfig(/--nats-url: required/));
  });
});
