import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decodeFrame,
  encodeClose,
  encodeData,
  encodePing,
  encodeWindow,
  type Frame,
  FrameType,
} from '../../broker/codec.js';
import { ReceiveBudget } from '../../broker/credit.js';
import { ErrorCode, type KnatsError } from '../../broker/errors.js';
import { silentLogger } from '../../broker/logging.js';
import { Tunnel, type TunnelLocalSide } from '../../broker/tunnel.js';

const settings = { window: 64 * 1024, minWindow: 16 * 1024, budget: 1 << 20 };

function harness(sendLimit = 1 << 20) {
  const sent: Frame[] = [];
  const delivered: Buffer[] = [];
  const events: string[] = [];
  let finished: { err: KnatsError | undefined } | undefined;
  let ended: KnatsError | undefined | 'open' = 'open';
  const pendingDone: (() => void)[] = [];
  const tunnel = new Tunnel({
    id: 't1',
    localSubject: 'x.fe.f.t1',
    credit: settings,
    budget: new ReceiveBudget(settings.budget),
    publisher: {
      maxDataPayload: 1000,
      publish: (_subject, frame) => sent.push(decodeFrame(Buffer.from(frame))!),
    },
    logger: silentLogger(),
    hooks: {
      ended: (_t, err) => {
        ended = err;
      },
      blockedChanged: (_t, blocked) => events.push(blocked ? 'blocked' : 'unblocked'),
    },
    lingerMs: 1000,
  });
  tunnel.open('peer', 'x.ag.a.t1', sendLimit);
  const local: TunnelLocalSide = {
    deliver: (chunk, done) => {
      delivered.push(chunk);
      pendingDone.push(done);
    },
    pause: () => events.push('pause'),
    resume: () => events.push('resume'),
    finish: (err) => {
      finished = { err };
    },
  };
  tunnel.attach(local);
  return {
    tunnel,
    sent,
    delivered,
    events,
    pendingDone,
    get finished() {
      return finished;
    },
    get ended() {
      return ended;
    },
  };
}

describe('tunnel state machine', () => {
  it('splits writes into frames no larger than the bus allows, with consecutive sequence numbers', () => {
    const h = harness();
    h.tunnel.write(Buffer.alloc(2500, 1));
    assert.deepEqual(
      h.sent.map((f) => (f.type === FrameType.Data ? [f.seq, f.payload.length] : f.type)),
      [
        [1, 1000],
        [2, 1000],
        [3, 500],
      ],
    );
  });

  it('pauses the local source without credit and resumes on a WINDOW grant', () => {
    const h = harness(1500);
    h.tunnel.write(Buffer.alloc(2500, 1));
    assert.equal(h.tunnel.bufferedOut, 1000);
    assert.deepEqual(h.events, ['pause', 'blocked']);
    h.tunnel.handleFrame(encodeWindow(2000));
    assert.equal(h.tunnel.bufferedOut, 500, 'a partial grant sends what fits');
    h.tunnel.handleFrame(encodeWindow(1000));
    assert.equal(h.tunnel.bufferedOut, 500, 'a stale grant changes nothing');
    h.tunnel.handleFrame(encodeWindow(5000));
    assert.equal(h.tunnel.bufferedOut, 0);
    assert.deepEqual(h.events, ['pause', 'blocked', 'resume', 'unblocked']);
    const dataBytes = h.sent
      .filter((f) => f.type === FrameType.Data)
      .reduce((n, f) => n + (f.type === FrameType.Data ? f.payload.length : 0), 0);
    assert.equal(dataBytes, 2500);
  });

  it('delivers in order and grants more credit once bytes are consumed', () => {
    const h = harness();
    for (let seq = 1; seq <= 8; seq++) h.tunnel.handleFrame(encodeData(seq, Buffer.alloc(4096, seq)));
    assert.equal(h.delivered.length, 8);
    assert.equal(h.tunnel.bufferedIn, 8 * 4096);
    assert.equal(h.sent.length, 0, 'no grant before anything was consumed');
    for (const done of h.pendingDone) done();
    assert.equal(h.tunnel.bufferedIn, 0);
    const grants = h.sent.filter((f) => f.type === FrameType.Window);
    assert.ok(grants.length >= 1);
    const last = grants.at(-1)!;
    assert.ok(last.type === FrameType.Window && last.limit === 8 * 4096 + settings.window);
  });

  it('closes with KNATS_SEQUENCE_GAP when a DATA frame is missing', () => {
    const h = harness();
    h.tunnel.handleFrame(encodeData(1, Buffer.from('a')));
    h.tunnel.handleFrame(encodeData(3, Buffer.from('c')));
    assert.equal(h.finished?.err?.code, ErrorCode.SequenceGap);
    const close = h.sent.at(-1)!;
    assert.ok(close.type === FrameType.Close && close.code === ErrorCode.SequenceGap, 'the peer is told why');
  });

  it('detects frames lost before a CLOSE or PING by their last sequence number', () => {
    const a = harness();
    a.tunnel.handleFrame(encodeData(1, Buffer.from('a')));
    a.tunnel.handleFrame(encodeClose(2, '', ''));
    assert.equal(a.finished?.err?.code, ErrorCode.SequenceGap);
    const b = harness();
    b.tunnel.handleFrame(encodePing(1));
    assert.equal(b.finished?.err?.code, ErrorCode.SequenceGap);
    const c = harness();
    c.tunnel.handleFrame(encodeData(1, Buffer.from('a')));
    c.tunnel.handleFrame(encodePing(1));
    assert.equal(c.finished, undefined);
    assert.equal(c.sent.at(-1)?.type, FrameType.Pong);
  });

  it('closes with KNATS_CREDIT_VIOLATION when the peer overruns its grant', () => {
    const h = harness();
    h.tunnel.handleFrame(encodeData(1, Buffer.alloc(settings.window + 1)));
    assert.equal(h.finished?.err?.code, ErrorCode.CreditViolation);
  });

  it('a clean local close waits for credit to flush, then sends CLOSE with the last seq', () => {
    const h = harness(1000);
    h.tunnel.write(Buffer.alloc(1500, 1));
    h.tunnel.close();
    assert.equal(h.ended, 'open', 'still flushing');
    h.tunnel.handleFrame(encodeWindow(1500));
    const close = h.sent.at(-1)!;
    assert.ok(close.type === FrameType.Close && close.lastSeq === 2 && close.code === '');
    assert.equal(h.ended, undefined);
  });

  it('a peer CLOSE with an error reaches the local side with its code', () => {
    const h = harness();
    h.tunnel.handleFrame(encodeClose(0, ErrorCode.DialRefused, 'refused'));
    assert.equal(h.finished?.err?.code, ErrorCode.DialRefused);
  });

  it('treats an unknown error code from a newer peer as a generic failure', () => {
    const h = harness();
    h.tunnel.handleFrame(encodeClose(0, 'KNATS_FROM_THE_FUTURE', 'x'));
    assert.equal(h.finished?.err?.code, ErrorCode.DialFailed);
  });
});
