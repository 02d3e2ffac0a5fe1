/** Scenario 3, dial latency: sequential and concurrent dials through each door against the dial floor, with the frontends' dial stage histogram. */
import { type Bench, round, type Target } from '../bench-context.js';
import { type Kind, percentile, type Row, type SamplesResult, sortNumbers } from '../common.js';
import { parseStages, type StageScrape, stagesBetween } from '../dial-stages.js';
import { httpGet } from '../procs.js';
import { progress } from '../progress.js';

export async function dial(bench: Bench): Promise<void> {
  const { seqDials, concDials, dialConcurrency: conc } = bench.sizes;
  const failures: DialFailures = { count: 0, errors: [] };
  const seq = async (kind: Kind, name: string, ownConnection = true) => {
    const how = ownConnection ? 'single-use' : 'new streams on a warm connection,';
    progress(`dials: ${seqDials} sequential ${how} ${name}`);
    const r = await bench.measured(`dial sequential ${how} ${name}`, () =>
      bench.w1.request<SamplesResult>({
        cmd: 'dials',
        kind,
        count: seqDials,
        concurrency: 1,
        ownConnection,
      }),
    );
    dialFailed(failures, r, seqDials, name);
    const sorted = sortNumbers(r.samples);
    return { p50: percentile(sorted, 50) / 1000, p99: percentile(sorted, 99) / 1000 };
  };
  const rate = async (kind: Kind, name: string) => {
    progress(`dials: ${concDials} with ${conc} concurrent dialers, ${name}`);
    const r = await bench.measured(`dial concurrent ${name}`, () =>
      bench.w1.request<SamplesResult>({ cmd: 'dials', kind, count: concDials, concurrency: conc }),
    );
    dialFailed(failures, r, concDials, name);
    return concDials / r.seconds;
  };
  const tcp = { ...(await seq('direct', 'TCP connect')), rate: await rate('direct', 'TCP connect') };
  const stub = {
    ...(await seq('grpc-relay', 'gRPC relay')),
    rate: await rate('grpc-relay', 'gRPC relay'),
  };
  const grpc = { ...(await seq('grpc', 'gRPC tunnel')), rate: await rate('grpc', 'gRPC tunnel') };
  const stubWarm = await seq('grpc-relay', 'gRPC relay', false);
  const floor = await seq('nats', 'NATS requests answered after a TCP connect (dial floor)');
  const grpcWarm = await withStagesOf(bench, 'grpc', () => seq('grpc', 'gRPC tunnel', false));
  const connect = bench.connectAvailable
    ? {
        ...(await withStagesOf(bench, 'connect', () => seq('connect', 'CONNECT tunnel'))),
        rate: await rate('connect', 'CONNECT tunnel'),
      }
    : undefined;

  const ms = (v: number) => round(v, 3);
  bench.add({ scenario: 'dial', figure: 'TCP connect p50 (baseline)', value: ms(tcp.p50), unit: 'ms' });
  bench.add({ scenario: 'dial', figure: 'TCP connect p99 (baseline)', value: ms(tcp.p99), unit: 'ms' });
  bench.add({
    scenario: 'dial',
    figure: `TCP connects/s, ${conc} concurrent (baseline)`,
    value: round(tcp.rate, 0),
    unit: '/s',
  });
  const vs = (figure: string, value: number, unit: string, baseline: [string, number], target?: Target) => {
    const row: Row = {
      scenario: 'dial',
      figure,
      value: unit === 'ms' ? ms(value) : round(value, 0),
      unit,
      baseline: { name: baseline[0], value: unit === 'ms' ? ms(baseline[1]) : round(baseline[1], 0), unit },
      ratio: round(value / baseline[1], 2),
    };
    if (target) {
      row.target = target.text;
      row.met = target.ok(value);
    }
    bench.add(row);
  };
  vs('gRPC relay, no bus: dial p50 (baseline)', stub.p50, 'ms', ['TCP connect p50', tcp.p50]);
  vs('gRPC relay, no bus: dial p99 (baseline)', stub.p99, 'ms', ['TCP connect p99', tcp.p99]);
  vs(`gRPC relay, no bus: dials/s, ${conc} concurrent (baseline)`, stub.rate, '/s', [
    'TCP connects/s',
    tcp.rate,
  ]);
  vs('gRPC tunnel dial p50', grpc.p50, 'ms', ['gRPC relay p50', stub.p50], {
    text: '<= 0.8 ms',
    ok: (v) => v <= 0.8,
  });
  vs('gRPC tunnel dial p99', grpc.p99, 'ms', ['gRPC relay p99', stub.p99], {
    text: '<= 3 ms',
    ok: (v) => v <= 3,
  });
  vs(`gRPC tunnel dials/s, ${conc} concurrent`, grpc.rate, '/s', ['gRPC relay dials/s', stub.rate], {
    text: '>= 2000/s',
    ok: (v) => v >= 2000,
  });
  vs('gRPC tunnel dial p50, warm connection (new stream only)', grpcWarm.p50, 'ms', [
    'gRPC relay, same',
    stubWarm.p50,
  ]);
  vs('gRPC tunnel dial p99, warm connection (new stream only)', grpcWarm.p99, 'ms', [
    'gRPC relay, same',
    stubWarm.p99,
  ]);
  for (const [p, label, maxMs, maxRatio] of [
    ['p50', 'p50', 0.8, 1.75],
    ['p99', 'p99', 3, 1.3],
  ] as const) {
    bench.add({
      scenario: 'dial',
      figure: `dial floor ${label} (baseline): NATS request answered after a loopback TCP connect`,
      value: ms(floor[p]),
      unit: 'ms',
    });
    // A new stream on a warm connection, DIAL_REQ pipelined behind its HEADERS (no round trip between):
    // DIAL_REQ -> DIAL_RSP on a ready connection, plus the server's stream setup.
    vs(
      `gRPC dial on a ready connection (DIAL_REQ -> DIAL_RSP) ${label} vs floor`,
      grpcWarm[p],
      'ms',
      [`dial floor ${label}`, floor[p]],
      {
        text: `<= ${maxMs} ms and <= ${maxRatio}x floor`,
        ok: (v) => v <= maxMs && v / floor[p] <= maxRatio,
      },
    );
  }
  // The dial crosses two hops whose floors are measured above: grpc-js on the door (the gRPC relay's
  // warm dial, less its TCP connect) and the bus (the dial floor, which includes the TCP connect). A sum
  // of medians, not the median of a sum: an estimate (and none for p99).
  vs("gRPC dial on a ready connection p50 vs both hops' floors (estimate)", grpcWarm.p50, 'ms', [
    'gRPC relay warm p50 - TCP connect p50 + dial floor p50',
    stubWarm.p50 - tcp.p50 + floor.p50,
  ]);
  bench.add({
    scenario: 'dial',
    figure: 'failed dials, all dial runs above',
    value: failures.count,
    unit: '',
    target: '0',
    met: failures.count === 0,
    extra: { errors: failures.errors },
  });
  if (connect) {
    vs('HTTP CONNECT tunnel dial p50', connect.p50, 'ms', ['TCP connect p50', tcp.p50]);
    vs('HTTP CONNECT tunnel dial p99', connect.p99, 'ms', ['TCP connect p99', tcp.p99]);
    vs(`HTTP CONNECT dials/s, ${conc} concurrent`, connect.rate, '/s', ['TCP connects/s', tcp.rate]);
  } else {
    bench.naRows('dial', ['HTTP CONNECT tunnel dial p50', 'HTTP CONNECT tunnel dial p99'], 'ms');
    bench.naRows('dial', [`HTTP CONNECT dials/s, ${conc} concurrent`], '/s');
  }
}

/** knats_dial_stage_seconds as the frontends export it now. */
async function scrapeDialStages(bench: Bench): Promise<StageScrape> {
  const frontends = [bench.fleet.grpcFrontend, bench.fleet.connectFrontend].flatMap((c) => (c ? [c] : []));
  const texts = await Promise.all(frontends.map(async (c) => (await httpGet(c.healthPort, '/metrics')).body));
  return parseStages(texts);
}

/**
 * Runs `run` and keeps the dial stages `door` observed meanwhile: the stage
 * table shows the sequential dials, one at a time, not the concurrent runs
 * (where stages mostly measure queueing).
 */
async function withStagesOf<T>(bench: Bench, door: string, run: () => Promise<T>): Promise<T> {
  const before = await scrapeDialStages(bench);
  const result = await run();
  const seen = stagesBetween(before, await scrapeDialStages(bench));
  const stages = [...(bench.dialStages?.stages ?? []), ...seen.stages.filter((s) => s.door === door)];
  bench.dialStages = { found: seen.found || (bench.dialStages?.found ?? false), stages };
  return result;
}

/** Failed dials over the dial scenario's runs. */
interface DialFailures {
  count: number;
  errors: string[];
}

/** A few failed dials are reported as a figure; more than 1% fail the scenario. */
function dialFailed(failures: DialFailures, r: SamplesResult, count: number, name: string): void {
  if (r.failed === 0) return;
  failures.count += r.failed;
  failures.errors.push(`${r.failed} of ${count} ${name}: ${r.firstError}`);
  if (r.failed > count / 100)
    throw new Error(`${r.failed} of ${count} ${name} dials failed: ${r.firstError}`);
}
