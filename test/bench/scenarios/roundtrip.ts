/** Scenario 2, round trips: a tunnel's RTT overhead over direct TCP, kinds interleaved, against the round-trip floor. */
import { FLOOR_PERCENTILES, floorRows } from '../baselines.js';
import { type Bench, round } from '../bench-context.js';
import { type InterleavedResult, KiB, type Kind, percentile, type Row, sortNumbers } from '../common.js';
import { progress } from '../progress.js';

export async function roundtrip(bench: Bench): Promise<void> {
  const { roundTrips: count, rtWarmup: warmup } = bench.sizes;
  const kinds: [Kind, string, boolean][] = [
    ['relay', 'TCP relay hop (baseline)', false],
    ['grpc-relay', 'gRPC relay hop, no bus (baseline)', false],
    ['nats-relay', 'minimal NATS tunnel, nats.js and a socket alone per end (baseline)', false],
    ['grpc', 'gRPC tunnel', true],
    ['connect', 'HTTP CONNECT tunnel', true],
  ];
  const measuredKinds: Kind[] = [
    'direct',
    'nats',
    ...kinds.flatMap(([k]) => (k === 'connect' && !bench.connectAvailable ? [] : [k])),
  ];
  progress(`round trips: ${count} x 1 KiB echo on each of ${measuredKinds.join(', ')}, interleaved`);
  const r = await bench.measured('roundtrip interleaved', () =>
    bench.w1.request<InterleavedResult>({
      cmd: 'roundtrip-interleaved',
      kinds: measuredKinds,
      count,
      size: KiB,
      warmup,
      batch: 100,
    }),
  );
  const stats = (kind: Kind) => {
    const sorted = sortNumbers(r.samples[kind] ?? []);
    return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), p999: percentile(sorted, 99.9) };
  };
  const direct = stats('direct');
  const pcts = [
    ['p50', 'p50', 250],
    ['p99', 'p99', 1000],
    ['p999', 'p99.9', undefined],
  ] as const;
  for (const [p, label] of pcts) {
    bench.add({
      scenario: 'roundtrip',
      figure: `direct TCP RTT ${label} (baseline)`,
      value: round(direct[p], 0),
      unit: 'µs',
    });
  }
  const floor = stats('nats');
  for (const [p, label] of FLOOR_PERCENTILES) {
    bench.add({
      scenario: 'roundtrip',
      figure: `round-trip floor ${label} (baseline): 1 KiB NATS pub/sub ping-pong between two processes`,
      value: round(floor[p], 0),
      unit: 'µs',
    });
  }
  for (const [kind, name, hasTarget] of kinds) {
    if (kind === 'connect' && !bench.connectAvailable) {
      for (const [, label, limit] of pcts) {
        bench.naRows(
          'roundtrip',
          [`${name} RTT overhead ${label}`],
          'µs',
          limit !== undefined ? `<= ${limit} µs` : undefined,
        );
      }
      continue;
    }
    const s = stats(kind);
    for (const [p, label, limit] of pcts) {
      const overhead = s[p] - direct[p];
      const row: Row = {
        scenario: 'roundtrip',
        figure: `${name} RTT overhead ${label}`,
        value: round(overhead, 0),
        unit: 'µs',
        note: `${overhead >= 0 ? '+' : ''}${round(overhead, 0)} µs (${round(s[p], 0)} µs)`,
        baseline: { name: `direct ${label}`, value: round(direct[p], 0), unit: 'µs' },
        ratio: round(s[p] / direct[p], 2),
        extra: { absoluteMicros: round(s[p], 1) },
      };
      if (hasTarget && limit !== undefined) {
        row.target = `<= ${limit} µs`;
        row.met = overhead <= limit;
      }
      bench.add(row);
    }
    if (hasTarget) floorRows(bench, name, s, direct, floor, stats('nats-relay'));
  }
  if (!bench.connectAvailable) {
    const figures = FLOOR_PERCENTILES.map(
      ([, label]) => `HTTP CONNECT tunnel RTT overhead ${label} vs floor`,
    );
    bench.naRows('roundtrip', figures, 'µs');
  }
}
