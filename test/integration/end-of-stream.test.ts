/**
 * Every byte or a visible error, against real destination behaviours: the
 * matrix of destinations × doors × clients, each cell judged on bytes both
 * ways (sha256), the client-visible error where there must be one, the order
 * of the dial answer and the tunnel bytes, and what is left afterwards.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CLIENTS, DESTINATIONS, DOORS, describeCell, EosRig, matrixCell } from '../helpers/eos-scenarios.js';

describe('end-of-stream matrix: destinations × doors × clients', () => {
  const rig = new EosRig();
  before(() => rig.start());
  after(() => rig.stop());

  for (const door of DOORS) {
    for (const destination of DESTINATIONS) {
      for (const client of CLIENTS) {
        const cell = matrixCell(door, destination, client);
        it(describeCell(cell), async () => {
          assert.deepEqual(await rig.run(cell), []);
        });
      }
    }
  }
});
