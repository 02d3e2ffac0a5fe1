/**
 * The bench's command line (--quick, --json, --only, --cpu-prof, --transfer-mib)
 * and the sizes of a quick and a full run.
 */
import path from 'node:path';
import { KiB, MiB, SCENARIOS, type Scenario } from './common.js';

export interface Options {
  quick: boolean;
  json: boolean;
  only: Set<Scenario>;
  cpuProfDir: string | undefined;
  /** Overrides the size of each throughput transfer (experiments). */
  transferMiB?: number;
}

export interface Sizes {
  transferBytes: number;
  /** Each transfer runs this many times; the best counts. */
  throughputRounds: number;
  chunk: number;
  roundTrips: number;
  rtWarmup: number;
  seqDials: number;
  concDials: number;
  dialConcurrency: number;
  idleTunnels: number;
  activeTunnels: number;
  activeBytes: number;
  /** The single-tunnel download the active tunnels' aggregate is compared with. */
  oneTunnelBytes: number;
  noisyTunnels: number;
  noisyRoundTrips: number;
  noisyRepeats: number;
  churnCycles: number;
  balanceDials: number;
}

export const QUICK: Sizes = {
  transferBytes: 32 * MiB,
  throughputRounds: 1,
  chunk: 64 * KiB,
  roundTrips: 500,
  rtWarmup: 50,
  seqDials: 200,
  concDials: 400,
  dialConcurrency: 64,
  idleTunnels: 500,
  activeTunnels: 100,
  activeBytes: MiB,
  oneTunnelBytes: 32 * MiB,
  noisyTunnels: 100,
  noisyRoundTrips: 20,
  noisyRepeats: 1,
  churnCycles: 1000,
  balanceDials: 300,
};

export const FULL: Sizes = {
  transferBytes: 512 * MiB,
  throughputRounds: 3,
  chunk: 64 * KiB,
  roundTrips: 20_000,
  rtWarmup: 500,
  seqDials: 2000,
  concDials: 5000,
  dialConcurrency: 64,
  idleTunnels: 10_000,
  activeTunnels: 1000,
  activeBytes: MiB,
  oneTunnelBytes: 256 * MiB,
  noisyTunnels: 100,
  noisyRoundTrips: 200,
  noisyRepeats: 3,
  churnCycles: 100_000,
  balanceDials: 300,
};

export function parseArgs(argv: string[]): Options {
  const options: Options = { quick: false, json: false, only: new Set(SCENARIOS), cpuProfDir: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--quick') options.quick = true;
    else if (arg === '--json') options.json = true;
    else if (arg === '--only' || arg.startsWith('--only=')) {
      const list = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : argv[++i];
      if (!list) usage('--only needs a list of scenarios');
      const wanted = list.split(',').filter((s) => s !== '');
      for (const s of wanted) {
        if (!(SCENARIOS as readonly string[]).includes(s)) usage(`--only: unknown scenario ${s}`);
      }
      options.only = new Set(wanted as Scenario[]);
    } else if (arg === '--transfer-mib') {
      const mib = Number(argv[++i]);
      if (!Number.isInteger(mib) || mib < 1) usage('--transfer-mib needs a whole number of MiB');
      options.transferMiB = mib;
    } else if (arg === '--cpu-prof') {
      const dir = argv[++i];
      if (!dir) usage('--cpu-prof needs a directory');
      options.cpuProfDir = path.resolve(dir);
    } else if (arg === '--help' || arg === '-h') {
      process.stdout.write(
        `usage: node dist/test/bench/bench.js [--quick] [--json] [--only ${SCENARIOS.join(',')}] [--cpu-prof DIR] [--transfer-mib N]\n`,
      );
      process.exit(0);
    } else usage(`unknown argument ${arg}`);
  }
  return options;
}

function usage(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}
