/**
 * knats_dial_stage_seconds{door,stage}: a dial through a real nats-server,
 * agent and frontend (each door) is accounted for stage by stage, with the
 * agent's own stages carried back in its dial answer.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { DIAL_STAGES } from '../../broker/telemetry/dial-stages.js';
import { connectOnce, connectRequest } from '../helpers/connect-client.js';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { Fleet, fetchText } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

/** count and sum of every stage of one door, from a /metrics page. */
function stagesOf(page: string, door: string): Map<string, { count: number; sum: number }> {
  const stages = new Map<string, { count: number; sum: number }>();
  const sample = /^knats_dial_stage_seconds_(count|sum)\{door="([^"]+)",stage="([^"]+)"\} (\S+)$/gm;
  for (const [, kind, seriesDoor, stage, value] of page.matchAll(sample)) {
    if (seriesDoor !== door) continue;
    const entry = stages.get(stage!) ?? { count: 0, sum: 0 };
    entry[kind as 'count' | 'sum'] = Number(value);
    stages.set(stage!, entry);
  }
  return stages;
}

/** Every stage once, none negative, the agent's connect seen, and together no longer than the client waited. */
function checkStages(stages: Map<string, { count: number; sum: number }>, clientSeconds: number): void {
  assert.deepEqual([...stages.keys()].sort(), [...DIAL_STAGES].sort(), 'every stage, nothing else');
  let total = 0;
  for (const [stage, { count, sum }] of stages) {
    assert.equal(count, 1, `${stage} observed once`);
    assert.ok(sum >= 0 && sum < 5, `${stage}: ${sum} s`);
    total += sum;
  }
  assert.ok(stages.get('agent_connect')!.sum > 0, 'the TCP connect took some time');
  assert.ok(stages.get('bus_transit')!.sum > 0, 'two NATS hops took some time');
  assert.ok(total <= clientSeconds, `stages add up to ${total} s, the client waited ${clientSeconds} s`);
}

describe('dial stage histogram', () => {
  const fleet = new Fleet();
  let echo: Destination;

  before(async () => {
    await fleet.startNats();
    await fleet.agent();
    echo = await echoServer();
  });

  after(async () => {
    await echo?.close();
    await fleet.stop();
  });

  it('gRPC door: each stage once, from DIAL_REQ to DIAL_RSP', async () => {
    const frontend = await fleet.frontend();
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    try {
      const before = stagesOf((await fetchText(frontend.healthPort, '/metrics')).body, 'grpc');
      assert.equal(before.size, 0, 'no series before the first dial');
      const started = performance.now();
      const dial = await client.dial(echo.address);
      const clientSeconds = (performance.now() - started) / 1000;
      assert.equal(dial.error, '');
      checkStages(stagesOf((await fetchText(frontend.healthPort, '/metrics')).body, 'grpc'), clientSeconds);
    } finally {
      client.close();
    }
  });

  it('CONNECT door: each stage once, from the request header to the 200', async () => {
    const frontend = await fleet.frontend(['--mode', 'http-connect']);
    const started = performance.now();
    const { head, client } = await connectOnce({ path: frontend.uds }, connectRequest(echo.address));
    const clientSeconds = (performance.now() - started) / 1000;
    try {
      assert.equal(head.status, 200);
      const page = (await fetchText(frontend.healthPort, '/metrics')).body;
      checkStages(stagesOf(page, 'connect'), clientSeconds);
      assert.equal(stagesOf(page, 'grpc').size, 0, 'only the door that dialed');
    } finally {
      client.close();
    }
  });
});
