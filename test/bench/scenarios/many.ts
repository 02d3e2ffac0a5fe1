/** Scenario 4, many tunnels: the memory of many idle tunnels through each door, then some of them active at once. */
import { floorRelayMany } from '../baselines.js';
import { type Bench, mapValues, round, sleep, type Target } from '../bench-context.js';
import {
  type IdleActivateResult,
  type Kind,
  MB,
  MiB,
  type Row,
  sortNumbers,
  type ThroughputResult,
} from '../common.js';
import { type Proc, rssKiB, stopProc } from '../procs.js';
import { progress } from '../progress.js';

/** Idle connections a baseline relay holds at most (two descriptors each, under a 20000 limit). */
const RELAY_MAX_IDLE = 9000;

export async function many(bench: Bench): Promise<void> {
  const { idleTunnels: n, activeTunnels } = bench.sizes;
  // A relay holds two sockets per tunnel; the open-files limit here is 20000.
  const relayIdle = Math.min(n, RELAY_MAX_IDLE);
  const fleet = bench.fleet;
  const kib = (v: number) => round(v, 1);
  const manyRow = (
    figure: string,
    value: number,
    unit: string,
    baseline: [string, number],
    target?: Target,
  ) => {
    const row: Row = {
      scenario: 'many',
      figure,
      value: unit === 'KiB' ? kib(value) : round(value, unit === 'x' ? 2 : 1),
      unit,
      baseline: { name: baseline[0], value: round(baseline[1], 2), unit },
      ratio: round(value / baseline[1], 2),
    };
    if (target) {
      row.target = target.text;
      row.met = target.ok(value);
    }
    bench.add(row);
  };
  type ManyResult = Awaited<ReturnType<typeof manyThrough>>;
  /** The four rows of one door: idle RSS per tunnel in frontend and agent, then the 1,000 active tunnels. */
  const manyRows = (
    door: { idle: string; active: string },
    result: ManyResult,
    base: ManyResult,
    baseNames: { idle: string; active: string },
    idleTarget?: Target,
  ) => {
    for (const side of ['frontend', 'agent'] as const) {
      manyRow(
        `idle ${door.idle} tunnel RSS, ${side} (${n})`,
        result.perTunnel[side]!,
        'KiB',
        [baseNames.idle, base.perTunnel.relay!],
        idleTarget,
      );
    }
    manyRow(`${activeTunnels} active ${door.active} x 1 MiB: aggregate`, result.mbps, 'MB/s', [
      baseNames.active,
      base.mbps,
    ]);
    manyRow(`${activeTunnels} active ${door.active}: slowest/fastest`, result.spread, 'x', [
      baseNames.active,
      base.spread,
    ]);
    // Issue 13: a thousand CONNECT tunnels together move at least 0.9x what one tunnel moves alone.
    const one = result.oneMbps ?? Number.NaN;
    const row: Row = {
      scenario: 'many',
      figure: `${activeTunnels} active ${door.active} x 1 MiB: aggregate vs one tunnel`,
      value: round(result.mbps, 1),
      unit: 'MB/s',
      baseline: { name: 'one tunnel alone, download', value: round(one, 1), unit: 'MB/s' },
      ratio: round(result.mbps / one, 2),
    };
    if (door.active === 'CONNECT') {
      row.target = '>= 0.9x one tunnel';
      row.met = result.mbps / one >= 0.9;
    }
    bench.add(row);
  };

  // gRPC single-use tunnels (each its own HTTP/2 connection), against a plain gRPC hop.
  progress('many tunnels: fresh frontend and agent');
  await fleet.restart('grpc');
  const grpc = await manyThrough(bench, 'grpc', 'gRPC', () => ({
    frontend: fleet.grpcFrontend.proc,
    agent: fleet.agent.proc,
  }));
  await stopProc(fleet.grpcRelay);
  await fleet.startGrpcRelay();
  const grpcBase = await manyThrough(
    bench,
    'grpc-relay',
    'gRPC relay',
    () => ({ relay: fleet.grpcRelay }),
    relayIdle,
  );
  manyRows({ idle: 'gRPC', active: 'gRPC' }, grpc, grpcBase, {
    idle: `gRPC relay hop per conn (${relayIdle})`,
    active: 'same via gRPC relay',
  });

  if (!bench.connectAvailable) {
    bench.naRows(
      'many',
      [`idle HTTP CONNECT tunnel RSS, frontend (${n})`, `idle HTTP CONNECT tunnel RSS, agent (${n})`],
      'KiB',
      '<= 16 KiB',
    );
    bench.naRows('many', [`${activeTunnels} active CONNECT x 1 MiB: aggregate`], 'MB/s');
    bench.naRows('many', [`${activeTunnels} active CONNECT: slowest/fastest`], 'x');
    bench.naRows(
      'many',
      [`${activeTunnels} active CONNECT x 1 MiB: aggregate vs one tunnel`],
      'MB/s',
      '>= 0.9x one tunnel',
    );
    return;
  }
  progress('many tunnels: fresh CONNECT frontend and agent');
  await fleet.restart('http-connect');
  const connect = await manyThrough(bench, 'connect', 'CONNECT', () => ({
    frontend: fleet.connectFrontend!.proc,
    agent: fleet.agent.proc,
  }));
  await stopProc(fleet.relay);
  await fleet.startRelay();
  await fleet.initWorkers();
  const tcpBase = await manyThrough(bench, 'relay', 'TCP relay', () => ({ relay: fleet.relay }), relayIdle);
  manyRows(
    { idle: 'HTTP CONNECT', active: 'CONNECT' },
    connect,
    tcpBase,
    { idle: `TCP relay hop per conn (${relayIdle})`, active: 'same via TCP relay' },
    { text: '<= 16 KiB', ok: (v) => v <= 16 },
  );
  await floorRelayMany(bench);
}

/** Idle tunnels through one door: RSS per tunnel of each process, then some of them active. */
async function manyThrough(
  bench: Bench,
  kind: Kind,
  name: string,
  procs: () => Record<string, Proc>,
  n: number = bench.sizes.idleTunnels,
): Promise<{ perTunnel: Record<string, number>; mbps: number; spread: number; oneMbps?: number }> {
  const { activeTunnels, activeBytes, oneTunnelBytes, chunk } = bench.sizes;
  progress(`many tunnels: warming up ${name}`);
  await bench.w1.request({ cmd: 'dials', kind, count: 100, concurrency: 8 });
  await sleep(bench.settleMs);
  const before = mapValues(procs(), (p) => rssKiB(p.pid));
  progress(`many tunnels: opening ${n} idle ${name} tunnels`);
  await bench.measured(`many: open ${n} idle ${name}`, () => bench.openIdle(kind, n));
  await sleep(bench.settleMs * 1.5);
  const after = mapValues(procs(), (p) => rssKiB(p.pid));
  const perTunnel = mapValues(after, (v, k) => (v - before[k]!) / n);
  progress(`many tunnels: ${activeTunnels} of them move ${activeBytes / MiB} MiB each (${name})`);
  const active = await bench.measured(
    `many: ${activeTunnels} active ${name}`,
    () => activate(bench, activeTunnels, activeBytes),
    activeTunnels * activeBytes,
  );
  await bench.closeIdle();
  await sleep(bench.settleMs / 2);
  if (kind !== 'grpc' && kind !== 'connect') return { perTunnel, ...active };
  progress(`many tunnels: one ${name} tunnel alone downloads ${oneTunnelBytes / MiB} MiB`);
  const one = await bench.measured(`many: one ${name} tunnel`, () =>
    bench.w1.request<ThroughputResult>({
      cmd: 'throughput',
      kind,
      dir: 'down',
      bytes: oneTunnelBytes,
      chunk,
      warmup: Math.min(oneTunnelBytes / 4, 32 * MiB),
    }),
  );
  return { perTunnel, ...active, oneMbps: one.bytes / MB / one.seconds };
}

async function activate(
  bench: Bench,
  count: number,
  bytes: number,
): Promise<{ mbps: number; spread: number }> {
  const half = Math.ceil(count / 2);
  const results = await Promise.all([
    bench.w1.request<IdleActivateResult>({ cmd: 'idle-activate', count: half, bytes }),
    bench.w2.request<IdleActivateResult>({ cmd: 'idle-activate', count: count - half, bytes }),
  ]);
  const failed = results.reduce((n, r) => n + r.failed, 0);
  if (failed > 0) {
    throw new Error(
      `${failed} of ${count} active tunnels failed: ${results.find((r) => r.firstError)?.firstError}`,
    );
  }
  const durations = sortNumbers(results.flatMap((r) => r.durations));
  const seconds = Math.max(...results.map((r) => r.seconds));
  const total = results.reduce((n, r) => n + r.bytes, 0);
  return { mbps: total / MB / seconds, spread: durations[durations.length - 1]! / durations[0]! };
}
