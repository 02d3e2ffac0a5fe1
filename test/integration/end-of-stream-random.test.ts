/**
 * A brief seeded randomized end-of-stream run in `npm test` (fixed seeds, so
 * CI is repeatable); `npm run soak -- --seconds N` runs it with fresh seeds
 * for as long as asked, and `--seed S` replays a failing cell.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { randomCell } from '../helpers/eos-random.js';
import { describeCell, EosRig } from '../helpers/eos-scenarios.js';

const FIRST_SEED = 20261125;
const CELLS = 40;

describe('end-of-stream, seeded random cells', () => {
  const rig = new EosRig();
  before(() => rig.start());
  after(() => rig.stop());

  for (let seed = FIRST_SEED; seed < FIRST_SEED + CELLS; seed++) {
    const cell = randomCell(seed);
    it(`seed ${seed}: ${describeCell(cell)}`, async () => {
      const problems = await rig.run(cell);
      assert.deepEqual(problems, [], `replay with: npm run soak -- --seed ${seed}`);
    });
  }
});
