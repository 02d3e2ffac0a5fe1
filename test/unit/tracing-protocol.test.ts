/**
 * OTEL_EXPORTER_OTLP_PROTOCOL (and its _TRACES_ variant), the standard way to
 * say which OTLP transport the endpoint speaks: an endpoint set up for gRPC is
 * refused at start with the variable named, instead of every export failing.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { tracingSettings } from '../../broker/telemetry/tracing.js';

const ENDPOINT = 'http://otel-collector:4317';

describe('OTEL_EXPORTER_OTLP_PROTOCOL', () => {
  it('grpc is refused, naming the variable', () => {
    for (const name of ['OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL']) {
      assert.throws(
        () => tracingSettings(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: ENDPOINT, [name]: 'grpc' }),
        (err: unknown) =>
          err instanceof KnatsError &&
          err.code === ErrorCode.BadConfig &&
          err.message.startsWith(`${name}=grpc: `),
      );
    }
  });

  it('the traces variant wins over the general one, as the specification says', () => {
    const env = {
      OTEL_EXPORTER_OTLP_ENDPOINT: ENDPOINT,
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
    };
    assert.equal(tracingSettings(undefined, env)?.tracesUrl, `${ENDPOINT}/v1/traces`);
  });

  it('http/protobuf, http/json or nothing export over OTLP/HTTP', () => {
    for (const protocol of ['http/protobuf', 'http/json', undefined]) {
      const env = {
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://otel-collector:4318',
        OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
      };
      assert.equal(tracingSettings(undefined, env)?.tracesUrl, 'http://otel-collector:4318/v1/traces');
    }
  });

  it('no endpoint, no tracing: the protocol alone changes nothing; --otlp-endpoint is OTLP/HTTP by itself', () => {
    assert.equal(tracingSettings(undefined, { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }), undefined);
    assert.equal(
      tracingSettings('http://collector:4318', { OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })?.tracesUrl,
      'http://collector:4318/v1/traces',
    );
  });
});
