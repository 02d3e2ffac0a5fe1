/**
 * The design's floors (issue 13) measured in the same run: the NATS floor
 * relay between the two load workers (one stream, or one per tunnel of the
 * many-tunnels row) and the round-trip overhead rows set against the floor
 * and the minimal NATS tunnel.
 */
import { defaultCreditSettings } from '../../broker/tunnel/credit.js';
import { type Bench, round } from './bench-context.js';
import { MB, MiB, type Row, type ThroughputResult } from './common.js';
import { progress } from './progress.js';

/** The floors' percentiles, with issue 13's largest ratio of CONNECT's round-trip overhead to the floor. */
export const FLOOR_PERCENTILES = [
  ['p50', 'p50', 1.2],
  ['p99', 'p99', 1.5],
] as const;

/**
 * The floor relay (nats-relay-floor.ts): `streams` downloads of `bytes`
 * each from the bulk destination, through load-1 (sender), NATS and
 * load-2 (receiver) back to it, each stream under its own `window`.
 */
export async function floorRelay(bench: Bench, what: string, streams: number, bytes: number, window: number) {
  const url = bench.fleet.nats.url;
  const subject = 'bench.floor.data';
  const creditSubject = 'bench.floor.credit';
  return bench.measured(
    what,
    async () => {
      const ready = bench.w1.once('ready');
      const sender = bench.w1.request(
        { cmd: 'floor-send', url, subject, creditSubject, bytes, streams },
        600_000,
      );
      await ready;
      const receiver = bench.w2.request<ThroughputResult>(
        { cmd: 'floor-receive', url, subject, creditSubject, window, bytes, streams },
        600_000,
      );
      const [, result] = await Promise.all([sender, receiver]);
      return result;
    },
    bytes * streams,
  );
}

/**
 * A tunnel's round-trip overhead over direct TCP against the round-trip
 * floor; issue 13's targets are CONNECT's (1.2x at p50, 1.5x at p99).
 */
export function floorRows(
  bench: Bench,
  name: string,
  tunnel: Record<'p50' | 'p99', number>,
  direct: Record<'p50' | 'p99', number>,
  floor: Record<'p50' | 'p99', number>,
  minimalTunnel: Record<'p50' | 'p99', number>,
): void {
  for (const [p, label, maxRatio] of FLOOR_PERCENTILES) {
    const overhead = tunnel[p] - direct[p];
    const minimal = minimalTunnel[p] - direct[p];
    bench.add({
      scenario: 'roundtrip',
      figure: `${name} RTT overhead ${label} vs minimal NATS tunnel`,
      value: round(overhead, 0),
      unit: 'µs',
      baseline: { name: `minimal NATS tunnel overhead ${label}`, value: round(minimal, 0), unit: 'µs' },
      ratio: round(overhead / minimal, 2),
    });
    const row: Row = {
      scenario: 'roundtrip',
      figure: `${name} RTT overhead ${label} vs floor`,
      value: round(overhead, 0),
      unit: 'µs',
      baseline: { name: `round-trip floor ${label}`, value: round(floor[p], 0), unit: 'µs' },
      ratio: round(overhead / floor[p], 2),
    };
    if (name.includes('CONNECT')) {
      row.target = `<= ${maxRatio}x floor`;
      row.met = overhead / floor[p] <= maxRatio;
    }
    bench.add(row);
  }
}

/**
 * The design's floor for the 1,000-tunnel row: the floor relay with as many
 * streams of 1 MiB, each under the window a tunnel gets when that many share
 * the default receive budget, against one stream under a full window.
 */
export async function floorRelayMany(bench: Bench): Promise<void> {
  const { activeTunnels, activeBytes, oneTunnelBytes } = bench.sizes;
  const window = defaultCreditSettings.minWindow + Math.floor(defaultCreditSettings.budget / activeTunnels);
  progress(`many tunnels: floor relay, ${activeTunnels} streams x ${activeBytes / MiB} MiB, then one stream`);
  const many = await floorRelay(
    bench,
    `many: floor relay ${activeTunnels} streams`,
    activeTunnels,
    activeBytes,
    window,
  );
  const one = await floorRelay(
    bench,
    'many: floor relay one stream',
    1,
    oneTunnelBytes,
    defaultCreditSettings.window,
  );
  const mbps = (r: ThroughputResult) => r.bytes / MB / r.seconds;
  bench.add({
    scenario: 'many',
    figure: `floor relay, ${activeTunnels} streams x 1 MiB: aggregate vs one stream (baseline)`,
    value: round(mbps(many), 1),
    unit: 'MB/s',
    baseline: { name: 'one stream alone', value: round(mbps(one), 1), unit: 'MB/s' },
    ratio: round(mbps(many) / mbps(one), 2),
  });
}
