/**
 * One trace per tunnel: a frontend (in-process, configured by the standard
 * OTEL_* variables) and an agent (a `knats agent` process, configured by
 * --otlp-endpoint) export to a real OTLP/HTTP receiver, and the spans of one
 * tunnel form one tree across both processes through the traceparent of the
 * dial request. With nothing configured, no OpenTelemetry module is loaded.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { silentLogger } from '../../broker/logging.js';
import { frontendConfig } from '../../cli/config.js';
import { startFrontend } from '../../frontend/frontend.js';
import { type Destination, echoServer, randomBytesSeeded, refusedPort } from '../helpers/destinations.js';
import { eventually, Fleet, fetchText, frontendArgs } from '../helpers/fleet.js';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const run = promisify(execFile);
const probePath = fileURLToPath(new URL('../helpers/otel-probe.js', import.meta.url));

const KIND_SERVER = 2;
const KIND_CLIENT = 3;
const STATUS_ERROR = 2;

/** The one span named `name` among `spans`. */
function only(spans: readonly ReceivedSpan[], name: string): ReceivedSpan {
  const found = spans.filter((s) => s.name === name);
  assert.equal(
    found.length,
    1,
    `one ${name} span, got ${found.length}: ${spans.map((s) => s.name).join(', ')}`,
  );
  return found[0]!;
}

describe('one trace per tunnel', () => {
  const fleet = new Fleet();
  let receiver: OtlpReceiver;
  let echo: Destination;

  before(async () => {
    await fleet.startNats();
    receiver = await OtlpReceiver.start();
    echo = await echoServer();
  });
  after(async () => {
    await echo.close();
    await fleet.stop();
    await receiver.close();
  });

  it("joins the frontend's and the agent's spans of a tunnel, and of a refused dial, in one trace each", async () => {
    const agent = await fleet.spawnAgent(['--agent-id', 'traced-agent', '--otlp-endpoint', receiver.url]);
    const uds = fleet.socketPath();
    const { config } = frontendConfig(frontendArgs(fleet.nats.url, uds), {
      OTEL_EXPORTER_OTLP_ENDPOINT: `${receiver.url}/`,
      OTEL_SERVICE_NAME: 'edge-frontend',
    });
    const frontend = await startFrontend({ ...config, logger: silentLogger() });
    fleet.frontends.push(frontend);
    await eventually(async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200, 'ready');

    const client = new ProxyStreamClient(`unix:${uds}`);
    const payload = randomBytesSeeded(100_000);
    const dial = await client.dial(echo.address);
    assert.equal(dial.error, '');
    client.send(dial.connectID, payload);
    await eventually(() => client.dataOf(dial.connectID).length === payload.length, 'echo');
    client.closeRequest(dial.connectID);
    assert.equal(await client.waitClosed(dial.connectID), '');
    // Denied by the agent's default policy (metadata endpoint), so its policy span fails.
    const denied = await client.dial('169.254.169.254:80');
    assert.match(denied.error, /denied|not allowed|forbid/i);
    client.close();
    await eventually(() => frontend.debugState().tunnels === 0, 'tunnel ended on the frontend');

    // Stopping exports what each process still buffers.
    await frontend.stop();
    agent.child.kill('SIGTERM');
    await once(agent.child, 'exit');
    assert.deepEqual(receiver.rejected, []);

    const traces = new Map<string, ReceivedSpan[]>();
    for (const span of receiver.spans) traces.set(span.traceId, [...(traces.get(span.traceId) ?? []), span]);
    assert.equal(traces.size, 2, 'one trace per dial');
    const [ok, refused] = [...traces.values()].sort(
      (a, b) => Number(only(a, 'knats.tunnel').status.code) - Number(only(b, 'knats.tunnel').status.code),
    ) as [ReceivedSpan[], ReceivedSpan[]];

    // The tunnel: frontend root, route and bus request; the agent's side under the bus request.
    const root = only(ok, 'knats.tunnel');
    const route = only(ok, 'knats.route');
    const request = only(ok, 'knats.bus_request');
    const agentTunnel = only(ok, 'knats.agent.tunnel');
    const policy = only(ok, 'knats.agent.policy');
    const connect = only(ok, 'knats.tcp_connect');
    assert.equal(ok.length, 6, ok.map((s) => s.name).join(', '));
    assert.equal(root.parentSpanId, '');
    assert.equal(route.parentSpanId, root.spanId);
    assert.equal(request.parentSpanId, root.spanId);
    assert.equal(agentTunnel.parentSpanId, request.spanId, 'the agent continues the dial request');
    assert.equal(policy.parentSpanId, agentTunnel.spanId);
    assert.equal(connect.parentSpanId, policy.spanId);
    for (const span of [root, route, request]) assert.equal(span.service, 'edge-frontend');
    for (const span of [agentTunnel, policy, connect]) assert.equal(span.service, 'knats-agent');
    assert.equal(request.kind, KIND_CLIENT);
    assert.equal(agentTunnel.kind, KIND_SERVER);
    assert.equal(request.attributes['knats.outcome'], 'open');
    assert.equal(connect.attributes['network.peer.port'], echo.port);
    const tunnelId = root.attributes['knats.tunnel_id'];
    assert.ok(tunnelId);
    assert.equal(agentTunnel.attributes['knats.tunnel_id'], tunnelId);
    assert.equal(root.attributes['knats.agent_id'], 'traced-agent');
    // Bytes each way on both ends, and a clean close.
    for (const side of [root, agentTunnel]) {
      assert.equal(side.attributes['knats.tunnel.bytes_in'], payload.length, side.name);
      assert.equal(side.attributes['knats.tunnel.bytes_out'], payload.length, side.name);
      assert.equal(side.attributes['knats.tunnel.close_reason'], 'ok', side.name);
      assert.notEqual(side.status.code, STATUS_ERROR);
    }

    // The refused dial: the agent's policy span says why, and so does the frontend's root.
    const refusedRoot = only(refused, 'knats.tunnel');
    const refusedPolicy = only(refused, 'knats.agent.policy');
    assert.equal(refusedRoot.status.code, STATUS_ERROR);
    assert.equal(refusedRoot.attributes['knats.error.code'], 'KNATS_DESTINATION_DENIED');
    assert.equal(refusedPolicy.status.code, STATUS_ERROR);
    assert.equal(refusedPolicy.attributes['knats.error.code'], 'KNATS_DESTINATION_DENIED');
    assert.equal(only(refused, 'knats.agent.tunnel').parentSpanId, only(refused, 'knats.bus_request').spanId);
    assert.equal(
      refused.filter((s) => s.name === 'knats.tcp_connect').length,
      0,
      'a denied address is never dialed',
    );
  });

  it('costs only the spans when the collector is unreachable: one warning with its code, a prompt stop', async () => {
    const agent = await fleet.spawnAgent(['--otlp-endpoint', `http://127.0.0.1:${await refusedPort()}`]);
    const frontend = await fleet.frontend();
    await eventually(async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200, 'ready');
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    const dial = await client.dial(echo.address);
    assert.equal(dial.error, '', 'the tunnel works without its collector');
    client.send(dial.connectID, Buffer.from('ping'));
    await eventually(() => client.dataOf(dial.connectID).length === 4, 'echo');
    client.closeRequest(dial.connectID);
    await client.waitClosed(dial.connectID);
    client.close();
    const started = Date.now();
    agent.child.kill('SIGTERM');
    const [code] = await once(agent.child, 'exit');
    const ms = Date.now() - started;
    assert.equal(code, 0);
    assert.ok(ms < 6000, `stopped in ${ms} ms (export given up after 2 s)`);
    const warnings = agent.logs.filter((entry) => entry.code === 'KNATS_TRACE_EXPORT');
    assert.ok(warnings.length >= 1, 'the failed export is logged with its code');
    for (const entry of warnings) assert.equal(entry.stack, undefined);
    console.log(`agent stop with an unreachable collector: ${ms} ms, ${warnings.length} warning(s)`);
  });

  it('loads no OpenTelemetry SDK or exporter when nothing is configured (and does when it is)', async () => {
    const loaded = async (flags: string[]) => {
      const { stdout } = await run(process.execPath, [probePath, ...flags], { timeout: 60_000 });
      return (JSON.parse(stdout) as { packages: string[] }).packages;
    };
    // prom-client itself requires @opentelemetry/api (for exemplars), on main as here: the
    // API alone is a no-op facade; the SDK, the exporter and their timers are what tracing adds.
    assert.deepEqual(await loaded([]), ['@opentelemetry/api']);
    const configured = await loaded(['--otlp-endpoint', receiver.url]);
    for (const name of ['@opentelemetry/sdk-trace-base', '@opentelemetry/exporter-trace-otlp-http']) {
      assert.ok(
        configured.includes(name),
        `the probe sees ${name} when configured: ${configured.join(', ')}`,
      );
    }
  });
});
