import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ReceiveBudget, ReceiveCredit, SendCredit } from '../../broker/tunnel/credit.js';

const KiB = 1024;
const settings = { window: 256 * KiB, minWindow: 64 * KiB, budget: 1024 * KiB };

describe('credit flow control', () => {
  it('grants the full window when the shared budget allows', () => {
    const budget = new ReceiveBudget(settings.budget);
    const credit = new ReceiveCredit(settings, budget);
    assert.equal(credit.limit, 256 * KiB);
    assert.equal(budget.inUse, 192 * KiB);
  });

  it('never lets outstanding credit exceed the window', () => {
    const credit = new ReceiveCredit(settings, new ReceiveBudget(settings.budget));
    for (let i = 0; i < 100; i++) {
      assert.ok(credit.onReceived(16 * KiB));
      credit.onConsumed(16 * KiB);
      credit.nextGrant();
      assert.ok(credit.limit - credit.consumed <= settings.window);
    }
  });

  it('sends a new grant only after a quarter window was consumed', () => {
    const credit = new ReceiveCredit(settings, new ReceiveBudget(settings.budget));
    credit.onReceived(32 * KiB);
    credit.onConsumed(32 * KiB);
    assert.equal(credit.nextGrant(), undefined, '32 KiB is less than a quarter of 256 KiB');
    credit.onReceived(32 * KiB);
    credit.onConsumed(32 * KiB);
    assert.equal(credit.nextGrant(), 64 * KiB + 256 * KiB);
  });

  it('flags a peer that sends past its grant', () => {
    const credit = new ReceiveCredit(settings, new ReceiveBudget(settings.budget));
    assert.ok(credit.onReceived(256 * KiB));
    assert.equal(credit.onReceived(1), false);
  });

  it('guarantees every tunnel its minimum window when the budget is exhausted', () => {
    const budget = new ReceiveBudget(300 * KiB);
    const tunnels = Array.from({ length: 5 }, () => new ReceiveCredit(settings, budget));
    assert.deepEqual(
      tunnels.map((t) => t.limit / KiB),
      [256, 64 + 108, 64, 64, 64],
    );
    assert.equal(budget.inUse, 300 * KiB);
    assert.ok(tunnels[4]!.starved);
  });

  it('shares the budget evenly: tunnels above their share give the excess back as their grants drain', () => {
    const budget = new ReceiveBudget(400 * KiB);
    const [a, b, c, d] = [1, 2, 3, 4].map(() => new ReceiveCredit(settings, budget)) as [
      ReceiveCredit,
      ReceiveCredit,
      ReceiveCredit,
      ReceiveCredit,
    ];
    // Shares when each arrived: 400, 200, 133 and 100 KiB (capped at 192 by the window), from what was left.
    assert.deepEqual(
      [a, b, c, d].map((t) => t.limit / KiB),
      [256, 256, 64 + 16, 64],
    );
    assert.ok(d.starved);
    let woken = 0;
    budget.waitForCredit(() => woken++);
    const drain = (t: ReceiveCredit, bytes: number) => {
      t.onReceived(bytes);
      t.onConsumed(bytes);
      return t.nextGrant();
    };
    assert.equal(drain(a, 256 * KiB), 256 * KiB + 164 * KiB, 'the first shrinks to its share of 100 KiB');
    assert.equal(woken, 1, 'what it gave back wakes the starved');
    assert.equal(drain(b, 256 * KiB), 256 * KiB + 164 * KiB, 'so does the second');
    assert.equal(drain(d, 64 * KiB), 64 * KiB + 164 * KiB, 'the last grows to its share');
    assert.equal(drain(c, 80 * KiB), 80 * KiB + 164 * KiB);
    assert.equal(budget.inUse, 400 * KiB);
    assert.ok([a, b, c, d].every((t) => !t.starved));
    for (const t of [a, b, c, d]) t.release();
    assert.equal(budget.inUse, 0);
    assert.equal(budget.fairShare, 400 * KiB, 'no holders left');
  });

  it('wakes waiting tunnels when credit is given back, and returns all credit on release', () => {
    const budget = new ReceiveBudget(192 * KiB);
    const first = new ReceiveCredit(settings, budget);
    const second = new ReceiveCredit(settings, budget);
    assert.equal(second.limit, 64 * KiB);
    let woken = 0;
    budget.waitForCredit(() => woken++);
    first.release();
    assert.equal(woken, 1);
    assert.equal(budget.inUse, 0);
    second.onReceived(64 * KiB);
    second.onConsumed(64 * KiB);
    assert.equal(second.nextGrant(), 64 * KiB + 256 * KiB);
    second.release();
    assert.equal(budget.inUse, 0);
  });

  it('keeps the budget exact when giving back wakes the same tunnel again (re-entrant grant)', () => {
    // A tunnel waits for budget, then more tunnels join so its share shrinks below what it holds; its next
    // grant gives the excess back, which synchronously wakes the waiters, itself among them. The budget
    // once went negative this way (-11,583 bytes after 200 concurrent tunnels).
    const budget = new ReceiveBudget(settings.budget);
    const hog = new ReceiveCredit(settings, budget);
    const starved = Array.from({ length: 6 }, () => new ReceiveCredit(settings, budget));
    const waiter = starved[4]!;
    assert.ok(waiter.starved, 'the last tunnel got less than its share');
    budget.waitForCredit(() => waiter.nextGrant());
    const joined = Array.from({ length: 30 }, () => new ReceiveCredit(settings, budget));
    waiter.onReceived(waiter.limit);
    waiter.onConsumed(waiter.limit);
    waiter.nextGrant();
    for (const credit of [hog, ...starved, ...joined]) credit.release();
    assert.equal(budget.inUse, 0, 'every byte borrowed came back exactly once');
  });

  it('ignores stale or reordered grants on the sending side', () => {
    const send = new SendCredit(100);
    assert.equal(send.grant(50), false);
    assert.equal(send.available, 100);
    send.onSent(100);
    assert.equal(send.available, 0);
    assert.ok(send.grant(300));
    assert.equal(send.grant(200), false);
    assert.equal(send.available, 200);
  });
});
