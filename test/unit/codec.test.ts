import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import {
  decodeFrame,
  encodeBlocked,
  encodeClose,
  encodeData,
  encodePing,
  encodePong,
  encodeWindow,
  FrameType,
} from '../../broker/wire/codec.js';

describe('bus frame codec', () => {
  it('round-trips every frame type', () => {
    const payload = Buffer.from('hello tunnel');
    assert.deepEqual(decodeFrame(encodeData(42, payload)), { type: FrameType.Data, seq: 42, payload });
    assert.deepEqual(decodeFrame(encodeClose(7, ErrorCode.PeerGone, 'bye ✓')), {
      type: FrameType.Close,
      lastSeq: 7,
      code: ErrorCode.PeerGone,
      message: 'bye ✓',
    });
    assert.deepEqual(decodeFrame(encodeClose(0, '', '')), {
      type: FrameType.Close,
      lastSeq: 0,
      code: '',
      message: '',
    });
    assert.deepEqual(decodeFrame(encodeWindow(2 ** 40 + 5)), { type: FrameType.Window, limit: 2 ** 40 + 5 });
    assert.deepEqual(decodeFrame(encodeBlocked(123)), { type: FrameType.Blocked, sent: 123 });
    assert.deepEqual(decodeFrame(encodePing(9)), { type: FrameType.Ping, lastSeq: 9 });
    assert.deepEqual(decodeFrame(encodePong(0xffffffff)), { type: FrameType.Pong, lastSeq: 0xffffffff });
  });

  it('decodes DATA payloads as views, without copying', () => {
    const frame = encodeData(1, Buffer.alloc(1000, 1));
    const decoded = decodeFrame(frame);
    assert.ok(decoded?.type === FrameType.Data);
    assert.equal(decoded.payload.buffer, frame.buffer);
  });

  it('wraps sequence numbers at 2^32', () => {
    const decoded = decodeFrame(encodeData(2 ** 32 + 3, Buffer.alloc(0)));
    assert.ok(decoded?.type === FrameType.Data);
    assert.equal(decoded.seq, 3);
  });

  it('ignores frame types from newer peers', () => {
    assert.equal(decodeFrame(Buffer.from([0x7f, 1, 2, 3])), undefined);
  });

  for (const [name, bytes] of [
    ['empty', Buffer.alloc(0)],
    ['short DATA', Buffer.from([FrameType.Data, 0, 0])],
    ['short WINDOW', Buffer.from([FrameType.Window, 0, 0, 0])],
    ['CLOSE with a code longer than the frame', Buffer.from([FrameType.Close, 0, 0, 0, 1, 50, 65])],
    ['short PING', Buffer.from([FrameType.Ping])],
  ] as const) {
    it(`rejects a malformed frame: ${name}`, () => {
      assert.throws(
        () => decodeFrame(bytes),
        (err: unknown) => err instanceof KnatsError && err.code === ErrorCode.MalformedFrame,
      );
    });
  }

  it('truncates over-long close messages', () => {
    const decoded = decodeFrame(encodeClose(1, 'X', 'm'.repeat(5000)));
    assert.ok(decoded?.type === FrameType.Close);
    assert.equal(decoded.message.length, 1024);
  });
});
