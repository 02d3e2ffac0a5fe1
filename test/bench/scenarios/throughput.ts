/** Scenario 1, throughput: one tunnel's download and upload through each door against direct TCP, the relays and the NATS floor; then the CPU per MiB rows. */
import { DATA_HEADER_BYTES, MAX_DATA_PAYLOAD } from '../../../broker/wire/codec.js';
import { floorRelay } from '../baselines.js';
import { type Bench, CPU_TARGET, round } from '../bench-context.js';
import { KiB, type Kind, MB, MiB, type ThroughputResult } from '../common.js';
import { progress } from '../progress.js';
import { cpuPerMiB } from '../table.js';

/** The project's own DATA frame on the bus: the largest payload plus its header. */
const FRAME_BYTES = MAX_DATA_PAYLOAD + DATA_HEADER_BYTES;
const FRAME_LABEL = `${MAX_DATA_PAYLOAD}+${DATA_HEADER_BYTES} B`;

export async function throughput(bench: Bench): Promise<void> {
  const { transferBytes: bytes, chunk } = bench.sizes;
  const label = `${(bytes / MiB).toFixed(0)} MiB`;
  const mbps = (r: ThroughputResult) => r.bytes / MB / r.seconds;
  // The CPU records count the warm-up's bytes too: the processes spent CPU on them.
  const warmup = Math.min(bytes / 4, 32 * MiB);
  const transfer = async (kind: Kind, dir: 'up' | 'down', name: string) => {
    progress(`throughput${bench.roundLabel()}: ${name} ${dir === 'up' ? 'upload' : 'download'} ${label}`);
    const r = await bench.measured(
      `throughput ${name} ${dir}`,
      () =>
        bench.w1.request<ThroughputResult>({ cmd: 'throughput', kind, dir, bytes, chunk, warmup }, 600_000),
      bytes + warmup,
    );
    return mbps(r);
  };
  const nats = async (msgSize: number, name: string) => {
    progress(`throughput${bench.roundLabel()}: raw NATS ${name} ${label}`);
    const subject = `bench.ceiling.${msgSize}`;
    const creditSubject = `${subject}.credit`;
    const r = await bench.measured(
      `throughput raw NATS ${name}`,
      async () => {
        const ready = bench.w1.once('ready');
        const pub = bench.w1.request({
          cmd: 'nats-pub',
          url: bench.fleet.nats.url,
          subject,
          creditSubject,
          msgSize,
          bytes: bytes + warmup,
        });
        await ready;
        const sub = bench.w2.request<ThroughputResult>({
          cmd: 'nats-sub',
          url: bench.fleet.nats.url,
          subject,
          creditSubject,
          window: 4 * MiB,
          msgSize,
          payloadPerMsg: 64 * KiB,
          bytes: bytes + warmup,
          warmupMessages: Math.ceil(warmup / msgSize),
        });
        const [, result] = await Promise.all([pub, sub]);
        return result;
      },
      bytes + warmup,
    );
    return mbps(r);
  };

  const natsRelay = async () => {
    progress(`throughput${bench.roundLabel()}: TCP -> NATS -> TCP, nats.js alone (floor) ${label}`);
    const r = await floorRelay(bench, 'throughput NATS relay floor down', 1, bytes + warmup, 4 * MiB);
    return mbps(r);
  };

  // Every transfer once per round, the best round counts: the least disturbed by other tenants.
  const plan: [string, () => Promise<number>][] = [
    ['directUp', () => transfer('direct', 'up', 'direct TCP')],
    ['directDown', () => transfer('direct', 'down', 'direct TCP')],
    ['relayUp', () => transfer('relay', 'up', 'TCP relay')],
    ['relayDown', () => transfer('relay', 'down', 'TCP relay')],
    ['grpcRelayUp', () => transfer('grpc-relay', 'up', 'gRPC relay')],
    ['grpcRelayDown', () => transfer('grpc-relay', 'down', 'gRPC relay')],
    ['ceiling', () => nats(64 * KiB, '64 KiB messages')],
    ['frames', () => nats(FRAME_BYTES, `${FRAME_LABEL} frames`)],
    ['natsRelay', natsRelay],
    ['grpcUp', () => transfer('grpc', 'up', 'gRPC tunnel')],
    ['grpcDown', () => transfer('grpc', 'down', 'gRPC tunnel')],
  ];
  if (bench.connectAvailable) {
    plan.push(['connectUp', () => transfer('connect', 'up', 'CONNECT tunnel')]);
    plan.push(['connectDown', () => transfer('connect', 'down', 'CONNECT tunnel')]);
  }
  const best = new Map<string, number>();
  const all = new Map<string, number[]>();
  for (bench.round = 1; bench.round <= bench.sizes.throughputRounds; bench.round++) {
    for (const [key, run] of plan) {
      const value = await run();
      best.set(key, Math.max(best.get(key) ?? 0, value));
      all.set(key, [...(all.get(key) ?? []), round(value, 1)]);
    }
  }
  bench.round = 0;
  const get = (key: string) => best.get(key)!;
  const direct = { up: get('directUp'), down: get('directDown') };
  const relayUp = get('relayUp');
  const relayDown = get('relayDown');
  const ceiling = get('ceiling');

  const base = (name: string, value: number) => ({ name, value: round(value, 1), unit: 'MB/s' });
  const row = (figure: string, key: string, baseline: { name: string; value: number; unit: string }) =>
    bench.add({
      scenario: 'throughput',
      figure,
      value: round(get(key), 1),
      unit: 'MB/s',
      baseline,
      ratio: round(get(key) / baseline.value, 2),
      extra: { rounds: all.get(key) },
    });
  row('direct TCP upload (baseline)', 'directUp', base('direct TCP download', direct.down));
  row('direct TCP download (baseline)', 'directDown', base('direct TCP upload', direct.up));
  row('TCP relay hop upload (baseline)', 'relayUp', base('direct TCP upload', direct.up));
  row('TCP relay hop download (baseline)', 'relayDown', base('direct TCP download', direct.down));
  row('gRPC relay hop, no bus, upload (baseline)', 'grpcRelayUp', base('TCP relay upload', relayUp));
  row('gRPC relay hop, no bus, download (baseline)', 'grpcRelayDown', base('TCP relay download', relayDown));
  row('raw NATS 64 KiB msgs, 4 MiB credit = CEILING', 'ceiling', base('TCP relay download', relayDown));
  row(`raw NATS ${FRAME_LABEL} frames (this project's), 4 MiB credit`, 'frames', base('ceiling', ceiling));
  row(
    'TCP -> NATS -> TCP, nats.js and a socket alone per end (floor), 4 MiB credit',
    'natsRelay',
    base('ceiling', ceiling),
  );
  // Issue 13's targets: a CONNECT tunnel 0.9x the ceiling, a gRPC tunnel (HTTP/2 framing on top) 0.75x.
  const targetRow = (figure: string, key: string, minRatio: number) => {
    const target = `>= ${minRatio}x ceiling`;
    const value = best.get(key);
    if (value === undefined) {
      bench.naRows('throughput', [figure], 'MB/s', target);
      return;
    }
    const ratio = value / ceiling;
    bench.add({
      scenario: 'throughput',
      figure,
      value: round(value, 1),
      unit: 'MB/s',
      baseline: base('ceiling', ceiling),
      ratio: round(ratio, 2),
      target,
      met: ratio >= minRatio,
      extra: { rounds: all.get(key) },
    });
  };
  targetRow('gRPC tunnel upload', 'grpcUp', 0.75);
  targetRow('gRPC tunnel download', 'grpcDown', 0.75);
  targetRow('HTTP CONNECT tunnel upload', 'connectUp', 0.9);
  targetRow('HTTP CONNECT tunnel download', 'connectDown', 0.9);
  cpuRows(bench);
}

/**
 * CPU ms per MiB moved of the frontend and the agent for each door and
 * direction (issue 13: <= 1.5 each), beside the same end of the floor
 * relay (nats.js and a socket alone): the process that reads a socket and
 * publishes (agent of a download, frontend of an upload) beside the
 * floor's sender, the one that receives and writes a socket beside the
 * floor's receiver.
 */
function cpuRows(bench: Bench): void {
  const perMiB = cpuPerMiB(bench.cpu);
  const floor = perMiB.get('NATS relay floor down');
  const floorEnds = { sender: floor?.load1, receiver: floor?.load2 };
  const doors = [
    ['gRPC', 'gRPC tunnel', 'frontendGrpc'],
    ['HTTP CONNECT', 'CONNECT tunnel', 'frontendConnect'],
  ] as const;
  for (const [door, name, frontend] of doors) {
    for (const [dir, dirName] of [
      ['down', 'download'],
      ['up', 'upload'],
    ] as const) {
      for (const [proc, procName] of [
        [frontend, 'frontend'],
        ['agent', 'agent'],
      ] as const) {
        const figure = `CPU per MiB, ${door} tunnel ${dirName}, ${procName}`;
        const sends = (dir === 'down') === (procName === 'agent');
        const end = sends ? 'sender' : 'receiver';
        const base = floorEnds[end];
        const value = perMiB.get(`${name} ${dir}`)?.[proc];
        if (value === undefined || base === undefined) {
          bench.naRows('throughput', [figure], 'ms/MiB', CPU_TARGET.text);
          continue;
        }
        bench.add({
          scenario: 'throughput',
          figure,
          value: round(value, 2),
          unit: 'ms/MiB',
          baseline: { name: `floor relay ${end}`, value: round(base, 2), unit: 'ms/MiB' },
          ratio: round(value / base, 2),
          target: CPU_TARGET.text,
          met: CPU_TARGET.ok(value),
        });
      }
    }
  }
}
