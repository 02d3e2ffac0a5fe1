import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { formatTraceparent, parseTraceparent, tracingSettings } from '../../broker/telemetry/tracing.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';

const badConfig = (pattern: RegExp) => (err: unknown) =>
  err instanceof KnatsError && err.code === ErrorCode.BadConfig && pattern.test(err.message);

describe('tracing settings from flags and OTEL_* variables', () => {
  it('is off when nothing names an endpoint', () => {
    assert.equal(tracingSettings(undefined, {}), undefined);
    assert.equal(tracingSettings(undefined, { OTEL_SERVICE_NAME: 'x' }), undefined);
  });
  it('appends /v1/traces to a base endpoint (flag or OTEL_EXPORTER_OTLP_ENDPOINT), not to a traces endpoint', () => {
    assert.deepEqual(tracingSettings('http://collector:4318/', {}), {
      tracesUrl: 'http://collector:4318/v1/traces',
      serviceName: undefined,
    });
    assert.equal(
      tracingSettings(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: 'https://c:4318' })?.tracesUrl,
      'https://c:4318/v1/traces',
    );
    assert.equal(
      tracingSettings(undefined, {
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://base:4318',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://traces:4318/custom',
      })?.tracesUrl,
      'http://traces:4318/custom',
    );
  });
  it('lets the flag win over the environment, honours OTEL_SERVICE_NAME and OTEL_SDK_DISABLED', () => {
    const env = {
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://env:4318/v1/traces',
      OTEL_SERVICE_NAME: 'edge',
    };
    assert.deepEqual(tracingSettings('http://flag:4318', env), {
      tracesUrl: 'http://flag:4318/v1/traces',
      serviceName: 'edge',
    });
    assert.equal(tracingSettings('http://flag:4318', { ...env, OTEL_SDK_DISABLED: 'true' }), undefined);
  });
  it('refuses what is not an http(s) URL, naming where it came from', () => {
    assert.throws(() => tracingSettings('collector:4318', {}), badConfig(/^--otlp-endpoint: .*http/));
    assert.throws(
      () => tracingSettings(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' }),
      badConfig(/^OTEL_EXPORTER_OTLP_ENDPOINT: /),
    );
  });
  it('reaches both components through the CLI config (flag and KNATS_OTLP_ENDPOINT)', () => {
    const fe = frontendConfig(
      ['--nats-url', 'nats://n:4222', '--uds-name', '/tmp/s', '--otlp-endpoint', 'http://c:4318'],
      {},
    );
    assert.equal(fe.config.tracing?.tracesUrl, 'http://c:4318/v1/traces');
    const ag = agentConfig(['--nats-url', 'nats://n:4222'], { KNATS_OTLP_ENDPOINT: 'http://c:4318' });
    assert.equal(ag.config.tracing?.tracesUrl, 'http://c:4318/v1/traces');
    assert.equal(agentConfig(['--nats-url', 'nats://n:4222'], {}).config.tracing, undefined);
  });
});

describe('W3C traceparent', () => {
  const context = { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: 1 };
  it('round-trips', () => {
    const text = formatTraceparent(context);
    assert.equal(text, '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
    assert.deepEqual(parseTraceparent(text), context);
  });
  it('ignores what a peer sends that is absent, malformed or all zeros (the agent then starts a new trace)', () => {
    for (const text of [
      undefined,
      '',
      'garbage',
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
      `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01${'x'.repeat(1000)}`,
    ]) {
      assert.equal(parseTraceparent(text), undefined, String(text));
    }
  });
});
