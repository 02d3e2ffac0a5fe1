/** Scenario 7, balance: tunnels per agent when the frontends choose among three agents. */
import { type Bench, round, sleep } from '../bench-context.js';
import { httpGet, stopProc } from '../procs.js';
import { progress } from '../progress.js';

/**
 * Tunnels per agent when frontends choose the agent: two more agents join
 * (three in all), the gRPC door opens `balanceDials` idle tunnels, each
 * agent's open tunnels are read from its own /debug/state. Last, since
 * the extra agents would change what the scenarios above measure.
 */
export async function balance(bench: Bench): Promise<void> {
  const { fleet } = bench;
  const dials = bench.sizes.balanceDials;
  progress('balance: two more agents');
  const extra = await Promise.all([fleet.startAgent(), fleet.startAgent()]);
  try {
    const agents = [fleet.agent, ...extra];
    const before = await bench.openTunnels(agents);
    for (let i = 0; i < 100; i++) {
      const state = JSON.parse((await httpGet(fleet.grpcFrontend.adminPort, '/debug/state')).body);
      if (state.agentsTakingDials === 3) break;
      await sleep(50);
    }
    progress(`balance: ${dials} idle gRPC tunnels over 3 agents`);
    await bench.openIdle('grpc', dials);
    const open = await bench.openTunnels(agents);
    await bench.closeIdle();
    const perAgent = open.map((n, i) => n - before[i]!);
    const ratio = Math.max(...perAgent) / Math.max(1, Math.min(...perAgent));
    bench.add({
      scenario: 'balance',
      figure: `tunnels per agent, ${dials} dials over 3 agents: max/min`,
      value: round(ratio, 2),
      unit: 'x',
      target: '<= 1.2x',
      met: ratio <= 1.2,
      extra: { perAgent },
    });
  } finally {
    await Promise.all(extra.map((agent) => stopProc(agent.proc)));
  }
}
