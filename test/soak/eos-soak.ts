/**
 * The randomized end-of-stream run, for as long as asked:
 *
 *   npm run soak -- --seconds 600          random seeds for ten minutes
 *   npm run soak -- --seed 1234567         replays one cell exactly
 *
 * Every failing cell prints its seed and what went wrong; the exit status is
 * 1 when any cell failed.
 */
import { parseArgs } from 'node:util';
import { randomCell } from '../helpers/eos-random.js';
import { describeCell, EosRig } from '../helpers/eos-scenarios.js';

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '60' }, seed: { type: 'string' } },
});

const rig = new EosRig();
await rig.start();
let cells = 0;
let failures = 0;
try {
  const seeds = values.seed !== undefined ? [Number(values.seed)] : undefined;
  const deadline = Date.now() + Number(values.seconds) * 1000;
  let base = Math.floor(Math.random() * 2 ** 31);
  console.log(seeds ? `replaying seed ${seeds[0]}` : `random seeds from ${base} for ${values.seconds} s`);
  for (;;) {
    const seed = seeds ? seeds[cells] : base++;
    if (seed === undefined || (!seeds && Date.now() > deadline)) break;
    const cell = randomCell(seed);
    const problems = await rig.run(cell).catch((err: Error) => [err.message]);
    cells++;
    if (cells % 50 === 0) console.log(`${cells} cells, ${failures} failed so far`);
    if (problems.length > 0) {
      failures++;
      console.log(`FAIL seed ${seed}: ${describeCell(cell)}\n  ${problems.join('\n  ')}`);
      console.log(`  replay: npm run soak -- --seed ${seed}`);
    }
  }
} finally {
  await rig.stop();
}
console.log(`${cells} cells, ${failures} failed`);
process.exitCode = failures > 0 ? 1 : 0;
