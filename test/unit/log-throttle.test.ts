import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LogThrottle } from '../../broker/log-throttle.js';

describe('LogThrottle', () => {
  it('lets one line per key per interval through, and says how many it left out', () => {
    const throttle = new LogThrottle(1000);
    assert.equal(throttle.take('a', 0), 0);
    assert.equal(throttle.take('a', 10), undefined);
    assert.equal(throttle.take('a', 999), undefined);
    assert.equal(throttle.take('b', 20), 0, 'keys are apart');
    assert.equal(throttle.take('a', 1000), 2, 'two lines left out since the last');
    assert.equal(throttle.take('a', 1500), undefined);
  });

  it('remembers at most maxKeys keys, however many a peer makes up', () => {
    const throttle = new LogThrottle(1000, 100);
    for (let i = 0; i < 10_000; i++) assert.equal(throttle.take(`k${i}`, i % 500), 0);
    // A key seen long ago is forgotten first; a key seen within the interval would not pass twice.
    assert.equal(throttle.take('k9999', 600), undefined);
    assert.equal((throttle as unknown as { last: Map<string, unknown> }).last.size <= 100, true);
  });
});
