import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { createLogger } from '../../broker/logging.js';
import { agentConfig, agentFlags, frontendConfig, frontendFlags } from '../../cli/config.js';
import type { FlagSpec } from '../../cli/flags.js';
import { exampleArgs, proxyAgentFlagNames, proxyServerFlagNames } from '../fixtures/upstream-konnectivity.js';

const NATS = ['--nats-url', 'nats://127.0.0.1:4222'];
const FRONTEND_BASE = [...NATS, '--uds-name', '/tmp/knats-upstream-flags.sock'];

const badConfig = (pattern: RegExp) => (err: unknown) =>
  err instanceof KnatsError && err.code === ErrorCode.BadConfig && pattern.test(err.message);

/** A value each flag takes as upstream's users would write it. */
const SAMPLE_VALUES: Record<string, string> = {
  mode: 'grpc',
  'proxy-strategies': 'destHost,default',
  'tls-min-version': 'VersionTLS12',
  'cipher-suites': 'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256',
  stderrthreshold: 'WARNING',
  alsologtostderrthreshold: '1',
  'uds-name': '/tmp/knats-upstream-flags.sock',
  'server-port': '0',
  'server-id': 'proxy-server-1',
  'agent-id': 'proxy-agent-1',
  'agent-identifiers': 'host=node1&ipv4=10.0.0.1',
  'kubeconfig-qps': '5.5',
  'log-file-max-size': '0',
};
const KIND_SAMPLE: Record<FlagSpec['kind'], string> = { string: 'x', int: '9000', duration: '5s', bool: '' };

function spellings(spec: FlagSpec): string[][] {
  const flag = `--${spec.name}`;
  if (spec.kind === 'bool') return [[flag], [`${flag}=true`], [`${flag}=false`]];
  const value = SAMPLE_VALUES[spec.name] ?? KIND_SAMPLE[spec.kind];
  return [[`${flag}=${value}`], [flag, value]];
}

function acceptsEveryFlag(
  names: readonly string[],
  specs: readonly FlagSpec[],
  parse: (args: string[]) => { warnings: readonly { flag: string }[] },
) {
  for (const name of names) {
    const spec = specs.find((s) => s.name === name);
    it(`--${name}`, () => {
      assert.ok(spec, `--${name} is declared`);
      for (const args of spellings(spec)) {
        const { warnings } = parse(args);
        const expected: string[] = spec.replacedBy === undefined ? [] : [`--${name}`];
        assert.deepEqual(
          warnings.map((w) => w.flag),
          expected,
          `${args.join(' ')}: ${spec.replacedBy === undefined ? 'no warning' : 'one warning'}`,
        );
      }
    });
  }
}

describe("every proxy-server v0.36 flag is accepted by 'knats frontend', in pflag's spellings", () => {
  acceptsEveryFlag(proxyServerFlagNames, frontendFlags, (args) =>
    frontendConfig([...FRONTEND_BASE, ...args], {}),
  );
});

describe("every proxy-agent v0.36 flag is accepted by 'knats agent', in pflag's spellings", () => {
  acceptsEveryFlag(proxyAgentFlagNames, agentFlags, (args) => agentConfig([...NATS, ...args], {}));
});

describe("upstream's example manifests parse with only --nats-url added, with exactly the expected warnings", () => {
  for (const example of exampleArgs) {
    it(example.source, () => {
      const parse = example.role === 'frontend' ? frontendConfig : agentConfig;
      const { warnings } = parse([...example.args, ...NATS], {});
      assert.deepEqual(warnings.map((w) => w.flag).sort(), [...example.replaced].sort());
      for (const warning of warnings) {
        assert.equal(warning.code, ErrorCode.UpstreamFlagReplaced);
        assert.ok(warning.replacedBy.length > 0, `${warning.flag} names what replaces it`);
      }
    });
  }

  it('kind: stderr (--log-file has no effect with --logtostderr=true, as in klog), keepalive capped at our ping interval', () => {
    const { config, logging } = frontendConfig([...exampleArgs[0]!.args, ...NATS], {});
    assert.deepEqual(logging, { level: 'info' });
    assert.equal(config.nats.pingIntervalMs, 5000);
    assert.equal(config.mode, 'grpc');
    assert.equal(config.serverPort, 0);
    assert.equal(config.healthPort, 8092);
    assert.equal(config.adminPort, 8093);
  });

  it('kubernetes: --logtostderr=false logs to --log-file without a size limit, errors also on stderr', () => {
    const example = exampleArgs.find((e) => e.source === 'examples/kubernetes/konnectivity-server.yaml')!;
    const { config, logging } = frontendConfig([...example.args, ...NATS], {});
    assert.equal(config.mode, 'http-connect');
    assert.deepEqual(logging, {
      level: 'info',
      file: { path: '/var/log/konnectivity-server.log', maxBytes: 0 },
      stderrLevel: 'error',
    });
  });

  it('agents keep their identifiers', () => {
    const example = exampleArgs.find((e) => e.source === 'examples/kind/konnectivity-agent-ds.yaml')!;
    const { config } = agentConfig([...example.args, ...NATS], {});
    assert.deepEqual([...config.identifiers.ipv4], ['172.18.0.3']);
  });
});

describe('klog flags map onto the logger', () => {
  const level = (args: string[]) => frontendConfig([...FRONTEND_BASE, ...args], {}).logging.level;

  it('--v: 0-3 info, 4 debug, 5+ trace; -v=N and --v N too', () => {
    assert.equal(level(['--v=0']), 'info');
    assert.equal(level(['--v', '3']), 'info');
    assert.equal(level(['-v=4']), 'debug');
    assert.equal(level(['-v', '9']), 'trace');
    assert.equal(level(['-v4']), 'debug', "pflag's shorthand with its value attached");
    assert.equal(level([]), 'info');
  });

  it('--v and --log-level together are refused; KNATS_LOG_LEVEL still works', () => {
    assert.throws(() => level(['--v=4', '--log-level', 'warn']), badConfig(/--v and --log-level/));
    assert.equal(frontendConfig(FRONTEND_BASE, { KNATS_LOG_LEVEL: 'warn' }).logging.level, 'warn');
  });

  it('--log-dir, --alsologtostderr and thresholds', () => {
    const { logging } = frontendConfig(
      [...FRONTEND_BASE, '--logtostderr=false', '--log-dir', '/var/log/knats', '--alsologtostderr'],
      {},
    );
    assert.deepEqual(logging, {
      level: 'info',
      file: { path: '/var/log/knats/knats-frontend.log', maxBytes: 1800 * 1024 * 1024 },
      stderrLevel: 'info',
    });
    const strict = frontendConfig(
      [...FRONTEND_BASE, '--legacy-stderr-threshold-behavior=false', '--stderrthreshold', 'WARNING'],
      {},
    );
    assert.deepEqual(strict.logging, { level: 'info', stderrLevel: 'warn' });
    assert.throws(
      () => frontendConfig([...FRONTEND_BASE, '--stderrthreshold', 'LOUD'], {}),
      badConfig(/--stderrthreshold: expected INFO, WARNING, ERROR or FATAL/),
    );
  });

  describe('a log file starts over at --log-file-max-size, as klog does', () => {
    const dir = mkdtempSync(join(tmpdir(), 'knats-log-'));
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('never grows past the limit and keeps the newest lines', () => {
      const path = join(dir, 'frontend.log');
      const logger = createLogger({
        name: 'frontend',
        output: { level: 'info', file: { path, maxBytes: 2000 }, stderrLevel: 'silent' },
      });
      for (let i = 0; i < 100; i++) logger.info({ i }, 'line');
      assert.ok(statSync(path).size <= 2000, `size ${statSync(path).size}`);
      const lines = readFileSync(path, 'utf8').trim().split('\n');
      assert.equal(JSON.parse(lines.at(-1)!).i, 99);
      assert.ok(lines.length > 3);
    });
  });
});

describe('mapped and renamed upstream flags', () => {
  it('--keepalive-time sets the NATS ping interval, between 1s and our 5s', () => {
    const ping = (value: string) =>
      agentConfig([...NATS, `--keepalive-time=${value}`], {}).config.nats.pingIntervalMs;
    assert.equal(ping('1h'), 5000);
    assert.equal(ping('2s'), 2000);
    assert.equal(ping('10ms'), 1000);
    assert.equal(ping('0'), 5000);
  });

  it('--frontend-keepalive-time sets the gRPC door keepalive (default 30s)', () => {
    assert.equal(frontendConfig(FRONTEND_BASE, {}).config.grpcKeepaliveMs, 30_000);
    assert.equal(
      frontendConfig([...FRONTEND_BASE, '--frontend-keepalive-time', '2m'], {}).config.grpcKeepaliveMs,
      120_000,
    );
  });

  it('--enable-profiling reaches both components', () => {
    assert.equal(frontendConfig(FRONTEND_BASE, {}).config.enableProfiling, false);
    assert.equal(frontendConfig([...FRONTEND_BASE, '--enable-profiling'], {}).config.enableProfiling, true);
    assert.equal(agentConfig([...NATS, '--enable-profiling'], {}).config.enableProfiling, true);
  });

  it("--health-server-host is upstream's name of --health-bind-address", () => {
    assert.equal(
      agentConfig([...NATS, '--health-server-host=10.0.0.5'], {}).config.healthBindAddress,
      '10.0.0.5',
    );
    assert.throws(
      () => agentConfig([...NATS, '--health-server-host=a', '--health-bind-address=b'], {}),
      badConfig(/give one of them/),
    );
  });

  it("PROXY_SERVER_ID and PROXY_AGENT_ID name the process, as upstream's; the flag wins", () => {
    assert.equal(frontendConfig(FRONTEND_BASE, { PROXY_SERVER_ID: 'server-a' }).config.id, 'server-a');
    assert.equal(
      frontendConfig([...FRONTEND_BASE, '--server-id', 'fe-1'], { PROXY_SERVER_ID: 'server-a' }).config.id,
      'fe-1',
    );
    assert.equal(agentConfig(NATS, { PROXY_AGENT_ID: 'agent-a' }).config.id, 'agent-a');
  });

  it('a bool flag does not take the next argument as its value (pflag)', () => {
    const { config, warnings } = agentConfig(
      [...NATS, '--sync-forever', '--agent-identifiers', 'host=a', '--count-server-leases'],
      {},
    );
    assert.deepEqual([...config.identifiers.host], ['a']);
    assert.deepEqual(
      warnings.map((w) => w.flag),
      ['--sync-forever', '--count-server-leases'],
    );
  });

  it('list flags add up when repeated, as pflag string slices do', () => {
    const suites = (args: string[]) => frontendConfig([...FRONTEND_BASE, ...args], {}).config.cipherSuites;
    assert.equal(
      suites([
        '--cipher-suites',
        'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256',
        '--cipher-suites=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384',
      ]),
      suites([
        '--cipher-suites',
        'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384',
      ]),
    );
  });

  it('flags that already existed keep their names, env vars and values', () => {
    const { config } = frontendConfig([...FRONTEND_BASE, '--health-port', '9001'], {
      KNATS_ADMIN_PORT: '9002',
      KNATS_BACKEND_DIAL_TIMEOUT: '3s',
    });
    assert.equal(config.healthPort, 9001);
    assert.equal(config.adminPort, 9002);
    assert.equal(config.backendDialTimeoutMs, 3000);
  });
});
