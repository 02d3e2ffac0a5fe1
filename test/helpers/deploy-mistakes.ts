/** The table of deliberate mistakes: a deploy file changed in a copy of the repository must fail the checks. */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { checkCompose } from './compose-check.js';
import { Repo } from './deploy-repo.js';
import { checkKubernetes } from './kubernetes-check.js';

/** A deliberate mistake: `from` replaced by `to` in `file` of a copy of the repository. */
export interface Mistake {
  what: string;
  file: string;
  from: string;
  to: string;
  caught: RegExp;
  /** `from` is in several identical blocks (the agents' Deployments): the first one changes. */
  first?: true;
}

/** One test per mistake: the deploy checks of the changed repository fail, saying `caught`. */
export function itCatches(mistakes: readonly Mistake[]): void {
  for (const mistake of mistakes) {
    it(`${mistake.what} (${mistake.file})`, () => {
      const original = new Repo().read(mistake.file);
      assert.ok(original !== undefined, `${mistake.file} exists`);
      const occurrences = original.split(mistake.from).length - 1;
      if (mistake.first)
        assert.ok(occurrences > 1, `${JSON.stringify(mistake.from)} occurs in several blocks`);
      else assert.equal(occurrences, 1, `${JSON.stringify(mistake.from)} occurs once in ${mistake.file}`);
      const repo = new Repo(new Map([[mistake.file, original.replace(mistake.from, mistake.to)]]));
      assert.throws(
        () => {
          checkCompose(repo);
          checkKubernetes(repo);
        },
        (err: Error) => {
          assert.match(err.message, mistake.caught);
          return true;
        },
      );
    });
  }
}
