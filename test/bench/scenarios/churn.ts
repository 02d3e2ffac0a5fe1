/** Scenario 6, dial/close churn: memory must stay flat over many open-close cycles. */
import { type Bench, mapValues, round, sleep } from '../bench-context.js';
import type { SamplesResult } from '../common.js';
import { httpGet, rssKiB } from '../procs.js';
import { progress } from '../progress.js';

export async function churn(bench: Bench): Promise<void> {
  const { churnCycles: cycles, dialConcurrency } = bench.sizes;
  const fleet = bench.fleet;
  const warm = Math.max(100, Math.round(cycles / 10));
  const run = async (count: number) => {
    const half = Math.ceil(count / 2);
    const results = await Promise.all([
      bench.w1.request<SamplesResult>(
        { cmd: 'dials', kind: 'grpc', count: half, concurrency: dialConcurrency / 2 },
        1_200_000,
      ),
      bench.w2.request<SamplesResult>(
        { cmd: 'dials', kind: 'grpc', count: count - half, concurrency: dialConcurrency / 2 },
        1_200_000,
      ),
    ]);
    const failed = results.reduce((n, r) => n + r.failed, 0);
    if (failed > 0)
      throw new Error(`${failed} churn dials failed: ${results.find((r) => r.firstError)?.firstError}`);
  };
  progress(`churn: ${warm} warm-up gRPC dial/close cycles`);
  await run(warm);
  await sleep(bench.settleMs);
  const procs = { frontend: fleet.grpcFrontend.proc, agent: fleet.agent.proc };
  const openBefore = await bench.openTunnels([fleet.grpcFrontend, fleet.agent]);
  const before = mapValues(procs, (p) => rssKiB(p.pid));
  progress(`churn: ${cycles - warm} more gRPC dial/close cycles`);
  await bench.measured(`churn ${cycles - warm} gRPC dial/close`, () => run(cycles - warm));
  await sleep(bench.settleMs * 2);
  const after = mapValues(procs, (p) => rssKiB(p.pid));
  const readState = () =>
    Promise.all([
      httpGet(fleet.grpcFrontend.adminPort, '/debug/state').then((r) => JSON.parse(r.body)),
      httpGet(fleet.agent.adminPort, '/debug/state').then((r) => JSON.parse(r.body)),
    ]);
  // Closes travel over the bus: give the last ones a moment. Tunnels some
  // earlier scenario left open (reported there) do not count here.
  const leftover = (s: { tunnels?: unknown }[]) =>
    Math.max(0, Number(s[0]!.tunnels ?? 0) - openBefore[0]!) +
    Math.max(0, Number(s[1]!.tunnels ?? 0) - openBefore[1]!);
  let state = await readState();
  for (let i = 0; i < 50 && leftover(state) > 0; i++) {
    await sleep(200);
    state = await readState();
  }
  for (const [name, b] of Object.entries(before)) {
    const a = after[name]!;
    bench.add({
      scenario: 'churn',
      figure: `${name} RSS after ${cycles} dial/close cycles`,
      value: round(a / 1024, 1),
      unit: 'MiB',
      baseline: { name: `after ${warm} (warm)`, value: round(b / 1024, 1), unit: 'MiB' },
      ratio: round(a / b, 3),
      target: '<= 1.05x (flat)',
      met: a / b <= 1.05,
      extra: { debugState: name === 'frontend' ? state[0] : state[1] },
    });
  }
  const left = leftover(state);
  bench.add({
    scenario: 'churn',
    figure: 'tunnels left open afterwards (frontend + agent)',
    value: left,
    unit: '',
    target: '0',
    met: left === 0,
    extra: { openBefore },
  });
}
