/**
 * Spans of tunnels that do not end well: a dial the destination refuses, a
 * tunnel the destination resets, and a dial with no agent. Each trace says
 * what failed, with the stable code, on every span that failed.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../broker/logging.js';
import { frontendConfig } from '../../cli/config.js';
import { startFrontend } from '../../frontend/frontend.js';
import { refusedPort } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText, frontendArgs } from '../helpers/fleet.js';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const STATUS_ERROR = 2;

function dump(spans: readonly ReceivedSpan[]): string {
  return spans
    .map(
      (s) =>
        `${s.service} ${s.name} parent=${s.parentSpanId || '-'} status=${s.status.code} ${JSON.stringify(s.attributes)}`,
    )
    .join('\n');
}

describe('traces of failed dials and reset tunnels', () => {
  const fleet = new Fleet();
  let receiver: OtlpReceiver;
  let resetter: Server;
  let resetterPort: number;

  before(async () => {
    await fleet.startNats();
    receiver = await OtlpReceiver.start();
    // Reads the first bytes, then resets the connection.
    resetter = createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => s.resetAndDestroy());
    });
    await new Promise<void>((resolve) => resetter.listen(0, '127.0.0.1', resolve));
    resetterPort = (resetter.address() as { port: number }).port;
  });
  after(async () => {
    resetter.close();
    await fleet.stop();
    await receiver.close();
  });

  it('a refused dial, a reset tunnel and a dial without agents each end their spans failed with the code', async () => {
    const uds = fleet.socketPath();
    const { config } = frontendConfig(frontendArgs(fleet.nats.url, uds), {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    });
    const frontend = await startFrontend({ ...config, logger: silentLogger() });
    fleet.frontends.push(frontend);
    const client = new ProxyStreamClient(`unix:${uds}`);
    const noAgent = await client.dial('127.0.0.1:9');
    assert.notEqual(noAgent.error, '');

    const agent = await fleet.spawnAgent(['--otlp-endpoint', receiver.url]);
    await eventually(async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200, 'ready');
    const refused = await client.dial(`127.0.0.1:${await refusedPort()}`);
    assert.notEqual(refused.error, '');
    const reset = await client.dial(`127.0.0.1:${resetterPort}`);
    assert.equal(reset.error, '');
    client.send(reset.connectID, Buffer.from('hello'));
    const closeError = await client.waitClosed(reset.connectID);
    client.close();
    await eventually(() => frontend.debugState().tunnels === 0, 'tunnels ended on the frontend');
    await frontend.stop();
    agent.child.kill('SIGTERM');
    await once(agent.child, 'exit');

    const traces = new Map<string, ReceivedSpan[]>();
    for (const span of receiver.spans) traces.set(span.traceId, [...(traces.get(span.traceId) ?? []), span]);
    const all = [...traces.values()];
    const report = all.map(dump).join('\n---\n');
    assert.match(closeError, /KNATS_CONNECTION_RESET/, 'the client sees the reset');
    assert.equal(all.length, 3, `one trace per dial:\n${report}`);
    for (const spans of all) {
      const root = spans.find((s) => s.parentSpanId === '');
      assert.ok(root, `a root span:\n${dump(spans)}`);
      assert.equal(root.status.code, STATUS_ERROR, `the root span failed:\n${dump(spans)}`);
      assert.match(String(root.attributes['knats.error.code']), /^KNATS_/, `with a code:\n${dump(spans)}`);
      for (const span of spans.filter((s) => s.name.endsWith('tunnel'))) {
        assert.equal(span.status.code, STATUS_ERROR, `${span.service} ${span.name} failed:\n${dump(spans)}`);
      }
    }
    const connects = receiver.spans.filter((s) => s.name === 'knats.tcp_connect');
    const failedConnect = connects.find((s) => s.status.code === STATUS_ERROR);
    assert.ok(failedConnect, `the refused TCP connect span failed:\n${report}`);
    assert.match(String(failedConnect.attributes['knats.error.code']), /^KNATS_/);
    const resetSides = receiver.spans.filter(
      (s) =>
        s.name.endsWith('tunnel') &&
        s.attributes['knats.tunnel.bytes_out'] !== undefined &&
        s.attributes['knats.tunnel.close_reason'] !== 'ok',
    );
    assert.ok(resetSides.length >= 2, `both ends of the reset tunnel carry its close reason:\n${report}`);
  });
});
