/**
 * The shared receive budget under churn, with real Tunnel state machines:
 * many tunnels starved for budget while others join, drain slowly, close
 * cleanly or abort (with deliveries still completing after the close). Seeded,
 * so a failure replays. What must hold at every step: no tunnel's grant runs
 * more than its window ahead of what it consumed, the grants above the
 * guaranteed minimum fit in the budget; and at the end every tunnel got all it
 * was sent (no stall) and the budget is back to exactly 0.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { silentLogger } from '../../broker/logging.js';
import { ReceiveBudget } from '../../broker/tunnel/credit.js';
import { Tunnel } from '../../broker/tunnel/tunnel.js';
import { decodeFrame, encodeData, FrameType } from '../../broker/wire/codec.js';
import { prng } from '../helpers/eos-random.js';

const settings = { window: 128 * 1024, minWindow: 8 * 1024, budget: 256 * 1024 };
const FRAME = 4096;

/** One tunnel's receiving side and the peer that sends into it, as far as its grants allow. */
class Receiver {
  readonly tunnel: Tunnel;
  peerLimit: number;
  peerSent = 0;
  consumed = 0;
  delivered = 0;
  readonly pendingDone: (() => void)[] = [];
  private seq = 1;

  constructor(
    id: number,
    budget: ReceiveBudget,
    readonly wants: number,
  ) {
    this.tunnel = new Tunnel({
      id: `t${id}`,
      localSubject: `x.fe.f.t${id}`,
      credit: settings,
      budget,
      publisher: {
        maxDataPayload: FRAME,
        publish: (_subject, frame) => {
          const decoded = decodeFrame(Buffer.from(frame));
          if (decoded?.type === FrameType.Window) this.peerLimit = Math.max(this.peerLimit, decoded.limit);
        },
      },
      logger: silentLogger(),
      hooks: { ended: () => {}, blockedChanged: () => {} },
      lingerMs: 1000,
    });
    this.peerLimit = this.tunnel.initialWindow;
    this.tunnel.open('peer', `x.ag.a.t${id}`, 1 << 30, 2);
    this.tunnel.attach({
      deliver: (chunk, done) => {
        this.delivered += chunk.length;
        this.pendingDone.push(() => {
          this.consumed += chunk.length;
          done(chunk.length);
        });
      },
      pause: () => {},
      resume: () => {},
      finish: () => {},
    });
  }

  /** The peer sends one frame if its grant allows; false when it cannot. */
  send(size: number): boolean {
    const n = Math.min(size, this.wants - this.peerSent, this.peerLimit - this.peerSent);
    if (n <= 0) return false;
    this.tunnel.handleFrame(encodeData(this.seq++, Buffer.alloc(n)));
    this.peerSent += n;
    return true;
  }

  get done(): boolean {
    return this.peerSent === this.wants && this.pendingDone.length === 0;
  }
}

function checkBounds(budget: ReceiveBudget, open: Receiver[], step: number): void {
  assert.ok(budget.inUse >= 0 && budget.inUse <= budget.capacity, `step ${step}: budget ${budget.inUse}`);
  let aboveMinimum = 0;
  for (const r of open) {
    const outstanding = r.peerLimit - r.consumed;
    assert.ok(outstanding <= settings.window, `step ${step}: ${r.tunnel.id} granted ${outstanding} ahead`);
    aboveMinimum += Math.max(0, outstanding - settings.minWindow);
  }
  assert.ok(
    aboveMinimum <= budget.inUse,
    `step ${step}: grants ${aboveMinimum} above minimum > borrowed ${budget.inUse}`,
  );
}

describe('receive budget under churn', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    it(`returns to exactly 0 with no stall (seed ${seed})`, () => {
      const next = prng(seed);
      const budget = new ReceiveBudget(settings.budget);
      const open: Receiver[] = [];
      /** Closed tunnels whose deliveries complete late, after the close. */
      const late: (() => void)[] = [];
      let ids = 0;
      let finished = 0;
      let peak = 0;
      for (let step = 0; step < 200_000; step++) {
        const roll = next();
        if (roll < 0.02 && open.length < 60 && ids < 400) {
          open.push(new Receiver(++ids, budget, Math.floor(next() * 600 * 1024)));
        } else if (roll < 0.025 && open.length > 0) {
          const [r] = open.splice(Math.floor(next() * open.length), 1);
          if (next() < 0.5) r!.tunnel.fail(new KnatsError(ErrorCode.ConnectionReset, 'churn'));
          else r!.tunnel.close();
          late.push(...r!.pendingDone.splice(0));
        } else if (roll < 0.5 && open.length > 0) {
          open[Math.floor(next() * open.length)]!.send(1 + Math.floor(next() * FRAME));
        } else if (roll < 0.9 && open.length > 0) {
          // Slow readers: some tunnels drain far less often than others.
          const r = open[Math.floor(next() * open.length)]!;
          if (Number(r.tunnel.id.slice(1)) % 3 === 0 && next() < 0.8) continue;
          r.pendingDone.shift()?.();
        } else if (late.length > 0) {
          late.shift()!();
        }
        checkBounds(budget, open, step);
        peak = Math.max(peak, budget.inUse);
        for (let i = open.length - 1; i >= 0; i--) {
          if (open[i]!.done) {
            open[i]!.tunnel.close();
            open.splice(i, 1);
            finished++;
          }
        }
        if (ids >= 400 && open.length === 0) break;
      }
      // Drain what is left: every open tunnel must finish on its grants alone.
      for (let round = 0; open.length > 0; round++) {
        assert.ok(
          round < 1_000_000,
          `stalled: ${open.map((r) => `${r.tunnel.id} ${r.peerSent}/${r.wants}`).join(', ')}`,
        );
        const r = open[round % open.length]!;
        const progressed = r.send(FRAME);
        const consumed = r.pendingDone.shift();
        consumed?.();
        if (!progressed && !consumed && !r.done) {
          const stuck = open.every(
            (o) => o.peerSent === o.peerLimit && o.pendingDone.length === 0 && !o.done,
          );
          assert.ok(
            !stuck,
            `every tunnel waits for a grant: ${open.map((o) => `${o.tunnel.id} ${o.peerSent}/${o.peerLimit}`).join(', ')}`,
          );
        }
        if (r.done) {
          r.tunnel.close();
          open.splice(open.indexOf(r), 1);
          finished++;
        }
        checkBounds(budget, open, -round);
      }
      for (const done of late) done();
      assert.ok(finished > 10, `${finished} tunnels ran to completion`);
      assert.ok(peak > budget.capacity * 0.9, `the budget ran dry (peak ${peak})`);
      assert.equal(budget.inUse, 0, 'every byte borrowed came back exactly once');
    });
  }
});
