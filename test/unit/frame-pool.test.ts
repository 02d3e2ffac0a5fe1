import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { silentLogger } from '../../broker/logging.js';
import { ReceiveBudget } from '../../broker/tunnel/credit.js';
import {
  encodePooledData,
  FRAME_BUFFER_BYTES,
  readFrameBuffer,
  recyclerFor,
  takeFrameBuffer,
} from '../../broker/tunnel/frame-pool.js';
import { Tunnel } from '../../broker/tunnel/tunnel.js';
import {
  DATA_HEADER_BYTES,
  decodeFrame,
  encodeWindow,
  MAX_DATA_PAYLOAD,
  SMALL_READ_BYTES,
} from '../../broker/wire/codec.js';

/** Empties the pool's free list (buffers from earlier cases would otherwise be handed out first). */
function drainPool(): void {
  const seen = new Set<ArrayBufferLike>();
  for (;;) {
    const b = takeFrameBuffer();
    if (seen.has(b.buffer)) return;
    seen.add(b.buffer);
    if (seen.size > 1000) return;
  }
}

function tunnelPublishingTo(frames: Uint8Array[], sendLimit: number): Tunnel {
  const settings = { window: 1 << 20, minWindow: 16 * 1024, budget: 1 << 22 };
  const tunnel = new Tunnel({
    id: 't1',
    localSubject: 'x.fe.f.t1',
    credit: settings,
    budget: new ReceiveBudget(settings.budget),
    publisher: { maxDataPayload: MAX_DATA_PAYLOAD, publish: (_subject, frame) => frames.push(frame) },
    logger: silentLogger(),
    hooks: { ended: () => {}, blockedChanged: () => {} },
    lingerMs: 1000,
  });
  tunnel.open('peer', 'x.ag.a.t1', sendLimit, 2);
  tunnel.attach({
    deliver: (c, done) => done(c.length),
    pause: () => {},
    resume: () => {},
    finish: () => {},
  });
  return tunnel;
}

describe('frame pool', () => {
  it('a pooled DATA frame decodes as encodeData would, and its buffer is reused only once written', () => {
    drainPool();
    const payload = Buffer.alloc(20_000, 7);
    const frame = encodePooledData(42, payload);
    const decoded = decodeFrame(frame);
    assert.deepEqual(decoded, { type: 1, seq: 42, payload });
    assert.equal(frame.buffer.byteLength, FRAME_BUFFER_BYTES);
    // Not written yet: a new frame gets another buffer.
    assert.notEqual(takeFrameBuffer().buffer, frame.buffer);
    const recycle = recyclerFor(frame);
    assert.ok(recycle, 'a pooled frame is recyclable');
    assert.equal(recyclerFor(frame), undefined, 'handed out once: a second write must not recycle it twice');
    recycle();
    assert.equal(takeFrameBuffer().buffer, frame.buffer, 'written: the next frame reuses its buffer');
  });

  it('a small payload gets a buffer of its own size, never a pooled one', () => {
    const frame = encodePooledData(1, Buffer.alloc(SMALL_READ_BYTES - 1));
    assert.notEqual(frame.buffer.byteLength, FRAME_BUFFER_BYTES);
    assert.equal(recyclerFor(frame), undefined);
  });

  it('a read that became one whole frame is recyclable; a read split by short credit is not', () => {
    drainPool();
    const whole: Uint8Array[] = [];
    const read = readFrameBuffer().subarray(0, 30_000).fill(1);
    tunnelPublishingTo(whole, 1 << 20).write(read, true);
    assert.equal(whole.length, 1);
    assert.ok(recyclerFor(whole[0]!), 'one read, one frame: nothing else uses the buffer');

    // Credit for 10,000 bytes: the first frame is built in place, the other 20,000 bytes wait in the tunnel,
    // in the same buffer. Reusing it once the first frame is written would overwrite them.
    const split: Uint8Array[] = [];
    const read2 = readFrameBuffer().subarray(0, 30_000).fill(2);
    const tunnel = tunnelPublishingTo(split, 10_000);
    tunnel.write(read2, true);
    assert.equal(split.length, 1);
    assert.equal(split[0]!.length, DATA_HEADER_BYTES + 10_000);
    assert.equal(recyclerFor(split[0]!), undefined, 'the rest of the read still lives in its buffer');
    assert.equal(tunnel.bufferedOut, 20_000);
  });

  it('with a peer window of two frames or more, a read waits for credit to cover it whole instead of splitting', () => {
    drainPool();
    const frames: Uint8Array[] = [];
    const window = 2 * MAX_DATA_PAYLOAD;
    const tunnel = tunnelPublishingTo(frames, window);
    const first = readFrameBuffer().subarray(0, MAX_DATA_PAYLOAD).fill(5);
    const second = readFrameBuffer().subarray(0, MAX_DATA_PAYLOAD).fill(6);
    tunnel.write(first, true);
    tunnel.write(second, true);
    const third = readFrameBuffer().subarray(0, 30_000).fill(7);
    tunnel.write(third, true);
    assert.equal(frames.length, 2, 'no credit left: the third read waits');
    tunnel.handleFrame(encodeWindow(window + 10_000));
    assert.equal(frames.length, 2, 'credit for 10,000 of its 30,000 bytes: it still waits, whole');
    tunnel.handleFrame(encodeWindow(window + 30_000));
    assert.equal(frames.length, 3);
    assert.equal(frames[2]!.buffer, third.buffer, 'one frame built around the read');
    assert.ok(recyclerFor(frames[2]!), 'and its buffer is reused once written');
    assert.equal(tunnel.bufferedOut, 0);
  });

  it('a read that waited whole for credit still leaves in place, without a copy, and is recyclable', () => {
    drainPool();
    const frames: Uint8Array[] = [];
    const tunnel = tunnelPublishingTo(frames, 0);
    const read = readFrameBuffer().subarray(0, 30_000).fill(3);
    tunnel.write(read, true);
    assert.equal(frames.length, 0, 'no credit yet');
    tunnel.handleFrame(encodeWindow(30_000));
    assert.equal(frames.length, 1);
    assert.equal(frames[0]!.buffer, read.buffer, 'built around the read itself');
    assert.deepEqual(decodeFrame(Buffer.from(frames[0]!)), {
      type: 1,
      seq: 1,
      payload: Buffer.alloc(30_000, 3),
    });
    assert.ok(recyclerFor(frames[0]!));

    // Half the credit: the first frame in place, the rest keeps waiting and must be copied when it goes.
    const read2 = readFrameBuffer().subarray(0, 30_000).fill(4);
    tunnel.write(read2, true);
    tunnel.handleFrame(encodeWindow(45_000));
    tunnel.handleFrame(encodeWindow(60_000));
    assert.equal(frames.length, 3);
    assert.equal(frames[1]!.buffer, read2.buffer);
    assert.equal(recyclerFor(frames[1]!), undefined, 'the rest still lived in the same buffer');
    assert.notEqual(frames[2]!.buffer, read2.buffer, 'the rest was copied: its front belongs to frame 2');
    assert.deepEqual(decodeFrame(Buffer.from(frames[2]!)), {
      type: 1,
      seq: 3,
      payload: Buffer.alloc(15_000, 4),
    });
  });
});
