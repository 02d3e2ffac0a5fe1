/** Scenario 5, noisy neighbour: round trips on quiet tunnels while others move bulk data. */
import { type Bench, round } from '../bench-context.js';
import {
  KiB,
  type Kind,
  type NoisyResult,
  percentile,
  type Row,
  type SamplesResult,
  sortNumbers,
} from '../common.js';
import { progress } from '../progress.js';

export async function noisy(bench: Bench): Promise<void> {
  const { noisyTunnels: tunnels, noisyRoundTrips: count, noisyRepeats, rtWarmup } = bench.sizes;
  const doors: [Kind, string][] = [['grpc', 'gRPC']];
  if (bench.connectAvailable) doors.push(['connect', 'HTTP CONNECT']);
  for (const [kind, name] of doors) {
    const calm: number[] = [];
    const noisy: number[] = [];
    let stuckBytes = 0;
    for (let rep = 0; rep < noisyRepeats; rep++) {
      for (const withNoise of [false, true]) {
        progress(
          `noisy neighbour: ${tunnels} ${name} tunnels x ${count} round trips ${withNoise ? 'beside a stuck tunnel' : 'alone'}`,
        );
        if (withNoise) {
          const r = await bench.w2.request<NoisyResult>({
            cmd: 'noisy-start',
            kind,
            chunk: 64 * KiB,
            stallMs: 1000,
          });
          stuckBytes = r.bytesAccepted;
        }
        try {
          const r = await bench.measured(`noisy ${name} ${withNoise ? 'with' : 'without'}`, () =>
            bench.w1.request<SamplesResult>({
              cmd: 'roundtrip',
              kind,
              tunnels,
              count,
              size: KiB,
              warmup: Math.min(5, rtWarmup),
            }),
          );
          (withNoise ? noisy : calm).push(...r.samples);
        } finally {
          if (withNoise) await bench.w2.request({ cmd: 'noisy-stop' });
        }
      }
    }
    // Invariant 3 (no orphans): once its client left, the stuck tunnel must close on both sides.
    const frontend = kind === 'grpc' ? bench.fleet.grpcFrontend : bench.fleet.connectFrontend!;
    const limit = bench.options.quick ? 5 : 15;
    progress(`noisy neighbour: waiting up to ${limit} s for the stuck ${name} tunnel to close`);
    const closedAfter = await bench.waitTunnelsClosed([frontend, bench.fleet.agent], limit);
    const calmSorted = sortNumbers(calm);
    const noisySorted = sortNumbers(noisy);
    for (const [p, label] of [
      [50, 'p50'],
      [99, 'p99'],
    ] as const) {
      const without = percentile(calmSorted, p);
      const withN = percentile(noisySorted, p);
      const row: Row = {
        scenario: 'noisy',
        figure: `${name}: ${tunnels} tunnels RTT ${label} beside a stuck tunnel`,
        value: round(withN, 0),
        unit: 'µs',
        baseline: { name: `${label} without it`, value: round(without, 0), unit: 'µs' },
        ratio: round(withN / without, 2),
        extra: { stuckTunnelBytesAccepted: stuckBytes },
      };
      if (p === 99) {
        row.target = '<= 1.10x';
        row.met = withN / without <= 1.1;
      }
      bench.add(row);
    }
    bench.add({
      scenario: 'noisy',
      figure: `${name}: stuck tunnel closed on both sides after its client left`,
      value: round(closedAfter.seconds, 2),
      unit: 's',
      note: closedAfter.closed ? `${round(closedAfter.seconds, 2)} s` : `> ${limit} s (still open)`,
      target: '<= 15 s',
      met: closedAfter.closed,
      extra: { stillOpen: closedAfter.open },
    });
  }
  if (!bench.connectAvailable) {
    bench.naRows(
      'noisy',
      [`HTTP CONNECT: ${tunnels} tunnels RTT p99 beside a stuck tunnel`],
      'µs',
      '<= 1.10x',
    );
    bench.naRows(
      'noisy',
      ['HTTP CONNECT: stuck tunnel closed on both sides after its client left'],
      's',
      '<= 15 s',
    );
  }
}
