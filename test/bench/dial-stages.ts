/**
 * Where a dial spends its time, from the frontends' own histogram
 * `knats_dial_stage_seconds{door, stage}`: the benchmark scrapes /metrics
 * before and after the dial scenario and reports, per stage present, the
 * dials observed meanwhile, their mean and p50/p99 estimated from the buckets.
 * Whatever stage labels the frontend exports are printed; a build without the
 * histogram reports none.
 */
import { type DialStage, type DialStages, textTable } from './common.js';

export const DIAL_STAGE_METRIC = 'knats_dial_stage_seconds';

/** One labelled series of a histogram: cumulative bucket counts by upper bound (seconds). */
interface Series {
  door: string;
  stage: string;
  buckets: Map<number, number>;
  sum: number;
  count: number;
}

/** A scrape of the histogram: series by door and stage. */
export type StageScrape = Map<string, Series>;

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** The histogram's series in a Prometheus text exposition (several frontends' texts may be merged). */
export function parseStages(texts: string[]): StageScrape {
  const scrape: StageScrape = new Map();
  for (const text of texts) {
    for (const line of text.split('\n')) {
      const m = SAMPLE.exec(line);
      if (!m || !m[1]!.startsWith(DIAL_STAGE_METRIC)) continue;
      const suffix = m[1]!.slice(DIAL_STAGE_METRIC.length);
      const labels = new Map([...m[2]!.matchAll(LABEL)].map((l) => [l[1]!, l[2]!]));
      const door = labels.get('door') ?? '';
      const stage = labels.get('stage') ?? '';
      const key = `${door}\u0000${stage}`;
      let series = scrape.get(key);
      if (!series) {
        series = { door, stage, buckets: new Map(), sum: 0, count: 0 };
        scrape.set(key, series);
      }
      const value = Number(m[3]);
      if (suffix === '_bucket') {
        const le = labels.get('le') === '+Inf' ? Number.POSITIVE_INFINITY : Number(labels.get('le'));
        series.buckets.set(le, (series.buckets.get(le) ?? 0) + value);
      } else if (suffix === '_sum') series.sum += value;
      else if (suffix === '_count') series.count += value;
    }
  }
  return scrape;
}

/**
 * The q-quantile (0..1) of cumulative buckets, interpolated linearly inside
 * the bucket it falls in, as Prometheus' histogram_quantile does; a quantile
 * in the +Inf bucket is reported as the largest finite bound.
 */
export function bucketQuantile(q: number, buckets: [number, number][]): number {
  const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
  const total = sorted[sorted.length - 1]?.[1] ?? 0;
  if (total === 0) return Number.NaN;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, cumulative] of sorted) {
    if (cumulative >= rank) {
      if (le === Number.POSITIVE_INFINITY) return lowerBound;
      if (cumulative === lowerCount) return le;
      return lowerBound + ((le - lowerBound) * (rank - lowerCount)) / (cumulative - lowerCount);
    }
    lowerBound = le;
    lowerCount = cumulative;
  }
  return lowerBound;
}

const ms = (seconds: number) => Math.round(seconds * 1_000_000) / 1000;

/** What each stage observed between two scrapes. */
export function stagesBetween(before: StageScrape, after: StageScrape): DialStages {
  const stages: DialStage[] = [];
  for (const [key, a] of after) {
    const b = before.get(key);
    const count = a.count - (b?.count ?? 0);
    const buckets = [...a.buckets].map(([le, n]): [number, number] => [le, n - (b?.buckets.get(le) ?? 0)]);
    const seen = count > 0;
    stages.push({
      door: a.door,
      stage: a.stage,
      count,
      meanMs: seen ? ms((a.sum - (b?.sum ?? 0)) / count) : null,
      p50Ms: seen ? ms(bucketQuantile(0.5, buckets)) : null,
      p99Ms: seen ? ms(bucketQuantile(0.99, buckets)) : null,
    });
  }
  return { found: after.size > 0, stages };
}

/** The stage table of the text report. */
export function formatStages(result: DialStages): string {
  const title = `dial stages (${DIAL_STAGE_METRIC}, frontends' /metrics): sequential dials, gRPC on a warm connection`;
  if (!result.found) return `${title}: no stage histogram`;
  const header = [title, 'count', 'mean ms', 'p50 ms (est.)', 'p99 ms (est.)'];
  const show = (v: number | null) => (v === null ? '' : v.toFixed(3));
  const lines = result.stages.map((s) => [
    `${s.door} ${s.stage}`,
    String(s.count),
    show(s.meanMs),
    show(s.p50Ms),
    show(s.p99Ms),
  ]);
  return textTable(header, lines);
}
