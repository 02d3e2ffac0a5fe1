/**
 * `npm run bench`: the performance benchmark of issue 5.
 *
 *   node dist/test/bench/bench.js [--quick] [--json] [--only scenario,...] [--cpu-prof DIR] [--transfer-mib N]
 *
 * Self-contained: starts its own nats-server, a gRPC frontend, an HTTP
 * CONNECT frontend and an agent as child processes of the real CLI, the
 * destinations, the baseline relays and the load generators as processes of
 * their own, so that no measured process does client work. Every figure is
 * printed beside a baseline measured in the same run, because this machine is
 * small and shared: quote the ratios.
 *
 * Scenarios: throughput, roundtrip, dial, many, noisy, churn.
 * The design's floors (issue 13) are measured in the same run between the two
 * load workers with nats.js alone (nats-floor.ts): the round-trip floor beside
 * the round trips, the dial floor beside the dials; the targets are ratios to
 * them. The dial scenario also reports the frontends' dial stage histogram
 * (dial-stages.ts).
 * --cpu-prof DIR runs the frontends and the agent under `node --cpu-prof`
 * (profiles are written when they stop at the end); summarize them with
 * `node dist/test/bench/profile-summary.js DIR/*.cpuprofile`.
 *
 * Extra CLI flags for the measured processes: BENCH_FRONTEND_ARGS and
 * BENCH_AGENT_ARGS (space-separated), e.g. BENCH_FRONTEND_ARGS='--tunnel-window 8388608'.
 * The gRPC client is a lean Go-like client on node:http2 (8 MiB windows, one
 * connection per single-use tunnel); BENCH_GRPC_CLIENT=grpc-js uses
 * @grpc/grpc-js instead. --transfer-mib overrides the throughput size.
 *
 * This file is the runner. The processes are started by process-tree.ts,
 * each scenario is a module of scenarios/, the floors they are set against
 * are measured by baselines.ts, and table.ts prints the tables.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { findNatsServer } from '../../broker/nats-server/local-server.js';
import { Bench, round } from './bench-context.js';
import { FULL, parseArgs, QUICK } from './bench-options.js';
import { type BenchResult, MiB, SCENARIOS, type Scenario } from './common.js';
import { formatStages } from './dial-stages.js';
import { Fleet } from './process-tree.js';
import { killAllSync } from './procs.js';
import { progress, progressDone, startedAt } from './progress.js';
import { balance } from './scenarios/balance.js';
import { churn } from './scenarios/churn.js';
import { dial } from './scenarios/dial.js';
import { many } from './scenarios/many.js';
import { noisy } from './scenarios/noisy.js';
import { roundtrip } from './scenarios/roundtrip.js';
import { throughput } from './scenarios/throughput.js';
import { formatCpu, formatTable } from './table.js';

/** What runs each scenario, in the order of SCENARIOS. */
const SCENARIO_RUNS: Record<Scenario, (bench: Bench) => Promise<void>> = {
  throughput,
  roundtrip,
  dial,
  many,
  noisy,
  churn,
  balance,
};

function machineInfo(): Record<string, unknown> {
  let natsVersion = 'unknown';
  try {
    natsVersion = execFileSync(findNatsServer(), ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    // reported as unknown
  }
  return {
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: round(os.totalmem() / 1024 ** 3, 1),
    loadAverage: os.loadavg().map((l) => round(l, 2)),
    natsServer: natsVersion,
    platform: `${os.platform()} ${os.release()}`,
  };
}

// ---- main ---------------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  if (options.cpuProfDir) mkdirSync(options.cpuProfDir, { recursive: true });
  const sizes = { ...(options.quick ? QUICK : FULL) };
  if (options.transferMiB) sizes.transferBytes = options.transferMiB * MiB;
  const fleet = new Fleet(options);
  const started = new Date();
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      killAllSync();
      process.exit(130);
    }
    stopping = true;
    progressDone();
    process.stderr.write(`bench: ${signal}: stopping child processes\n`);
    fleet.stop().finally(() => {
      killAllSync();
      process.exit(130);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', killAllSync);

  const machine = machineInfo();
  const bench = new Bench(fleet, sizes, options);
  try {
    await fleet.start();
    for (const scenario of SCENARIOS) {
      if (!options.only.has(scenario)) continue;
      if (stopping) break;
      try {
        await SCENARIO_RUNS[scenario](bench);
      } catch (err) {
        if (stopping) break;
        const message = `${scenario}: ${err instanceof Error ? err.message : String(err)}`;
        bench.errors.push(message);
        progressDone();
        process.stderr.write(`bench: scenario failed: ${message}\n`);
      }
    }
  } catch (err) {
    bench.errors.push(`setup: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    progress('stopping child processes');
    await fleet.stop().catch((err: unknown) => bench.errors.push(`cleanup: ${String(err)}`));
    progressDone();
  }

  const result: BenchResult = {
    benchmark: 'konnectivity-nats',
    mode: options.quick ? 'quick' : 'full',
    startedAt: started.toISOString(),
    seconds: round((performance.now() - startedAt) / 1000, 1),
    machine,
    connect: fleet.connectNa
      ? { available: false, reason: fleet.connectNa }
      : { available: fleet.connectFrontend !== undefined },
    scenarios: SCENARIOS.filter((s) => options.only.has(s)),
    rows: bench.rows,
    cpu: bench.cpu,
    errors: bench.errors,
  };
  if (bench.dialStages) result.dialStages = bench.dialStages;
  if (options.json) {
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } else {
    const out = [
      `konnectivity-nats benchmark (${result.mode}), ${result.startedAt}, ${result.seconds} s; node ${machine.node}, ${machine.cpus} CPUs, ${machine.natsServer}`,
      `MB = 10^6 bytes; throughput is payload bytes, best of ${sizes.throughputRounds} round(s); RTT overhead = tunnel minus direct TCP at the same percentile, kinds interleaved`,
      '',
      formatTable(result.rows),
    ];
    const cpu = formatCpu(result.cpu);
    if (cpu) out.push('', cpu);
    if (result.dialStages) out.push('', formatStages(result.dialStages));
    if (result.errors.length > 0) out.push('', 'ERRORS:', ...result.errors.map((e) => `  ${e}`));
    process.stdout.write(`${out.join('\n')}\n`);
  }
  if (options.cpuProfDir) process.stderr.write(`bench: CPU profiles in ${options.cpuProfDir}\n`);
  return result.errors.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
    killAllSync();
    process.exit(1);
  },
);
