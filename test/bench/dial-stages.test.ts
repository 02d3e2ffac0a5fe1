/**
 * The benchmark's dial stage table reads knats_dial_stage_seconds as
 * prom-client exposes it: deltas between two scrapes, bucket quantiles,
 * any stage labels, and "no stage histogram" when a build has none.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Histogram, Registry } from 'prom-client';
import {
  bucketQuantile,
  DIAL_STAGE_METRIC,
  formatStages,
  parseStages,
  stagesBetween,
} from './dial-stages.js';

function frontendRegistry(): { registry: Registry; histogram: Histogram<'door' | 'stage'> } {
  const registry = new Registry();
  const histogram = new Histogram({
    name: DIAL_STAGE_METRIC,
    help: 'dial stages',
    labelNames: ['door', 'stage'],
    buckets: [0.000025, 0.0001, 0.001, 0.01, 1],
    registers: [registry],
  });
  return { registry, histogram };
}

describe('dial stage table', () => {
  it('reports what each stage observed between two scrapes, with bucket estimates', async () => {
    const { registry, histogram } = frontendRegistry();
    histogram.observe({ door: 'grpc', stage: 'route' }, 0.5); // before: must not count
    const before = parseStages([await registry.metrics()]);
    for (let i = 0; i < 100; i++) histogram.observe({ door: 'grpc', stage: 'route' }, 0.00005);
    histogram.observe({ door: 'grpc', stage: 'bus_out' }, 0.002);
    histogram.observe({ door: 'grpc', stage: 'bus_out' }, 0.004);
    const connect = frontendRegistry();
    connect.histogram.observe({ door: 'connect', stage: 'route' }, 0.0005);
    const after = parseStages([await registry.metrics(), await connect.registry.metrics()]);

    const result = stagesBetween(before, after);
    assert.equal(result.found, true);
    const byName = new Map(result.stages.map((s) => [`${s.door} ${s.stage}`, s]));
    assert.deepEqual([...byName.keys()].sort(), ['connect route', 'grpc bus_out', 'grpc route']);

    const route = byName.get('grpc route')!;
    assert.equal(route.count, 100);
    assert.equal(route.meanMs, 0.05);
    // All 100 in the (25 µs, 100 µs] bucket: interpolated inside it.
    assert.ok(route.p50Ms! > 0.025 && route.p50Ms! <= 0.1, `p50 ${route.p50Ms}`);
    assert.ok(route.p99Ms! > route.p50Ms! && route.p99Ms! <= 0.1, `p99 ${route.p99Ms}`);

    const busOut = byName.get('grpc bus_out')!;
    assert.equal(busOut.count, 2);
    assert.equal(busOut.meanMs, 3);
    assert.ok(busOut.p99Ms! > 1 && busOut.p99Ms! <= 10);

    assert.equal(byName.get('connect route')!.count, 1);

    const text = formatStages(result);
    assert.match(text, /grpc route\s+\| 100\s+\| 0\.050/);
    assert.match(text, /grpc bus_out\s+\| 2\s+\| 3\.000/);
  });

  it('says so when no frontend exports the histogram', async () => {
    const registry = new Registry();
    const empty = parseStages([await registry.metrics(), 'knats_dials_total{door="grpc"} 3\n']);
    const result = stagesBetween(empty, empty);
    assert.deepEqual(result, { found: false, stages: [] });
    assert.match(formatStages(result), /no stage histogram/);
  });

  it('a stage that saw no dial has a count of 0 and no figures', async () => {
    const { registry, histogram } = frontendRegistry();
    histogram.observe({ door: 'grpc', stage: 'route' }, 0.001);
    const scrape = parseStages([await registry.metrics()]);
    assert.deepEqual(stagesBetween(scrape, scrape).stages, [
      { door: 'grpc', stage: 'route', count: 0, meanMs: null, p50Ms: null, p99Ms: null },
    ]);
  });

  it('estimates quantiles as histogram_quantile does', () => {
    const buckets: [number, number][] = [
      [1, 10],
      [2, 30],
      [Number.POSITIVE_INFINITY, 40],
    ];
    assert.equal(bucketQuantile(0.25, buckets), 1);
    assert.equal(bucketQuantile(0.5, buckets), 1.5);
    // In the +Inf bucket: the largest finite bound.
    assert.equal(bucketQuantile(0.99, buckets), 2);
    assert.ok(Number.isNaN(bucketQuantile(0.5, [[1, 0]])));
  });
});
