import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { silentLogger } from '../../broker/logging.js';
import { ReceiveBudget } from '../../broker/tunnel/credit.js';
import { Tunnel, type TunnelLocalSide } from '../../broker/tunnel/tunnel.js';
import {
  decodeFrame,
  encodeClose,
  encodeData,
  encodeFin,
  encodePing,
  encodeWindow,
  type Frame,
  FrameType,
} from '../../broker/wire/codec.js';

const settings = { window: 64 * 1024, minWindow: 16 * 1024, budget: 1 << 20 };

interface HarnessOptions {
  /** The peer's bus protocol version (2 knows FIN). */
  readonly peerVersion?: number;
  /** The local side supports half-close (has shutdownWrite). */
  readonly halfClose?: boolean;
  /** Leave the local side detached; call `attach()` later. */
  readonly detached?: boolean;
}

function harness(sendLimit = 1 << 20, options: HarnessOptions = {}) {
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
  tunnel.open('peer', 'x.ag.a.t1', sendLimit, options.peerVersion ?? 2);
  const local: TunnelLocalSide = {
    deliver: (chunk, done) => {
      delivered.push(chunk);
      pendingDone.push(() => done(chunk.length));
    },
    pause: () => events.push('pause'),
    resume: () => events.push('resume'),
    finish: (err) => {
      events.push(err ? `finish:${err.code}` : 'finish');
      finished = { err };
    },
  };
  if (options.halfClose) local.shutdownWrite = () => events.push('shutdownWrite');
  if (!options.detached) tunnel.attach(local);
  return {
    attach: () => tunnel.attach(local),
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

describe('tunnel end of stream', () => {
  const frames = (h: { sent: Frame[] }) =>
    h.sent.map((f) =>
      f.type === FrameType.Data ? `DATA${f.seq}` : f.type === FrameType.Fin ? `FIN${f.seq}` : f.type,
    );

  it('a local EOF while bytes wait for credit sends them, then a FIN, and keeps receiving', () => {
    const h = harness(1000, { halfClose: true });
    h.tunnel.write(Buffer.alloc(1500, 1));
    h.tunnel.finishSending();
    assert.deepEqual(frames(h), ['DATA1'], 'nothing more until credit comes');
    h.tunnel.handleFrame(encodeWindow(1500));
    assert.deepEqual(frames(h), ['DATA1', 'DATA2', 'FIN3']);
    h.tunnel.handleFrame(encodeData(1, Buffer.from('reply')));
    assert.equal(h.delivered.length, 1, 'the other direction still flows');
    assert.equal(h.ended, 'open');
    h.tunnel.handleFrame(encodeFin(2));
    assert.deepEqual(h.events.slice(-2), ['shutdownWrite', 'finish']);
    assert.equal(h.ended, undefined, 'FINs both ways end the tunnel cleanly');
  });

  it('a peer FIN ends local writing after every byte before it, and the tunnel once we are done too', () => {
    const h = harness(1 << 20, { halfClose: true });
    h.tunnel.handleFrame(encodeData(1, Buffer.from('a')));
    h.tunnel.handleFrame(encodeFin(2));
    assert.deepEqual(h.events, ['shutdownWrite']);
    h.tunnel.write(Buffer.from('still sending'));
    h.tunnel.finishSending();
    assert.deepEqual(frames(h), ['DATA1', 'FIN2']);
    assert.deepEqual(h.events, ['shutdownWrite', 'finish']);
  });

  it('without half-close on the local side, a peer FIN closes the whole tunnel cleanly after delivery', () => {
    const h = harness(1 << 20, { halfClose: false });
    h.tunnel.handleFrame(encodeData(1, Buffer.from('a')));
    h.tunnel.handleFrame(encodeFin(2));
    const close = h.sent.at(-1)!;
    assert.ok(close.type === FrameType.Close && close.code === '');
    assert.equal(h.delivered.length, 1);
    assert.deepEqual(h.events, ['finish']);
  });

  it('a peer of bus protocol 1 gets no FIN: a local EOF closes the tunnel as version 1 did', () => {
    const h = harness(1 << 20, { halfClose: true, peerVersion: 1 });
    h.tunnel.write(Buffer.from('x'));
    h.tunnel.finishSending();
    assert.deepEqual(frames(h), ['DATA1', FrameType.Close]);
  });

  it('bytes and a FIN that arrive before the adapter attaches are handed over, in order, on attach', () => {
    const h = harness(1 << 20, { halfClose: true, detached: true });
    h.tunnel.handleFrame(encodeData(1, Buffer.from('banner')));
    h.tunnel.handleFrame(encodeFin(2));
    assert.equal(h.delivered.length, 0);
    h.attach();
    assert.equal(h.delivered[0]?.toString(), 'banner');
    assert.deepEqual(h.events, ['shutdownWrite']);
  });

  it('a clean end before attach still delivers the early bytes; an abort before attach reaches the adapter', () => {
    const clean = harness(1 << 20, { detached: true });
    clean.tunnel.handleFrame(encodeData(1, Buffer.from('bye')));
    clean.tunnel.handleFrame(encodeClose(1, '', ''));
    clean.attach();
    assert.equal(clean.delivered[0]?.toString(), 'bye');
    assert.deepEqual(clean.events, ['finish']);
    const aborted = harness(1 << 20, { detached: true });
    aborted.tunnel.handleFrame(encodeData(1, Buffer.from('partial')));
    aborted.tunnel.handleFrame(encodeClose(1, ErrorCode.ConnectionReset, 'reset'));
    aborted.attach();
    assert.equal(aborted.delivered.length, 0, 'an abort does not pass for a short clean stream');
    assert.deepEqual(aborted.events, [`finish:${ErrorCode.ConnectionReset}`]);
  });

  it('a lost FIN is a sequence gap at the next PING; DATA after a FIN is refused', () => {
    const lost = harness(1 << 20, { halfClose: true });
    lost.tunnel.handleFrame(encodePing(1));
    assert.equal(lost.finished?.err?.code, ErrorCode.SequenceGap);
    const after = harness(1 << 20, { halfClose: true });
    after.tunnel.handleFrame(encodeFin(1));
    after.tunnel.handleFrame(encodeData(2, Buffer.from('late')));
    assert.equal(after.finished?.err?.code, ErrorCode.MalformedFrame);
  });

  it('a local abort drops what waits and tells the peer the code', () => {
    const h = harness(1000, { halfClose: true });
    h.tunnel.write(Buffer.alloc(1500, 1));
    h.tunnel.finishSending();
    h.tunnel.fail(new KnatsError(ErrorCode.ConnectionReset, 'reset'));
    const close = h.sent.at(-1)!;
    assert.ok(
      close.type === FrameType.Close && close.code === ErrorCode.ConnectionReset && close.lastSeq === 1,
    );
    assert.equal(h.tunnel.bufferedOut, 0);
  });

  it('gives up on a peer that grants nothing for the linger time after our EOF', async () => {
    const h = harness(1000, { halfClose: true });
    h.tunnel.write(Buffer.alloc(1500, 1));
    h.tunnel.finishSending();
    assert.equal(h.tunnel.finishOverdue, false);
    await new Promise((resolve) => setTimeout(resolve, 1100));
    assert.equal(h.tunnel.finishOverdue, true);
  });
});

describe('tunnel frames are bounded, not only bytes', () => {
  it('an empty DATA frame is malformed: the tunnel closes with the code, the peer is told', () => {
    const h = harness();
    h.tunnel.handleFrame(encodeData(1, Buffer.alloc(0)));
    assert.equal(h.finished?.err?.code, ErrorCode.MalformedFrame);
    const close = h.sent.at(-1)!;
    assert.ok(close.type === FrameType.Close && close.code === ErrorCode.MalformedFrame);
  });

  it('1-byte frames at a local side that takes nothing: a few chunks in its hands, the rest coalesced, all in order', () => {
    const h = harness(1 << 20, { halfClose: true });
    const window = h.tunnel.initialWindow;
    const expected = Buffer.alloc(window);
    for (let i = 0; i < window; i++) {
      expected[i] = i & 0xff;
      h.tunnel.handleFrame(encodeData(i + 1, expected.subarray(i, i + 1)));
    }
    assert.equal(h.finished, undefined, 'within its grant');
    // The window's eighth at CHUNK_COST_BYTES each: 16 chunks for 64 KiB.
    assert.equal(h.delivered.length, 16);
    assert.equal(h.tunnel.chunksInHand, 16);
    assert.equal(h.tunnel.bufferedIn, window);
    // The local side writes what it has: the held bytes follow in a few large chunks.
    while (h.pendingDone.length > 0) h.pendingDone.shift()!();
    assert.ok(
      h.delivered.length < 16 + 8,
      `${h.delivered.length} chunks delivered for ${window} 1-byte frames`,
    );
    assert.ok(Buffer.concat(h.delivered).equals(expected), 'byte-exact, in order');
    assert.equal(h.tunnel.bufferedIn, 0);
  });

  it('a FIN or clean close behind held bytes hands them all over first', () => {
    const fin = harness(1 << 20, { halfClose: true });
    for (let seq = 1; seq <= 100; seq++) fin.tunnel.handleFrame(encodeData(seq, Buffer.from([seq])));
    assert.ok(fin.delivered.length < 100);
    fin.tunnel.handleFrame(encodeFin(101));
    assert.equal(Buffer.concat(fin.delivered).length, 100);
    assert.equal(fin.events.at(-1), 'shutdownWrite');
    const close = harness(1 << 20);
    for (let seq = 1; seq <= 100; seq++) close.tunnel.handleFrame(encodeData(seq, Buffer.from([seq])));
    close.tunnel.handleFrame(encodeClose(100, '', ''));
    assert.equal(Buffer.concat(close.delivered).length, 100);
    assert.equal(close.finished?.err, undefined);
  });

  it('bytes before the local side attaches wait coalesced and are handed over on attach', () => {
    const h = harness(1 << 20, { detached: true });
    for (let seq = 1; seq <= 1000; seq++) h.tunnel.handleFrame(encodeData(seq, Buffer.from([seq & 0xff])));
    h.attach();
    while (h.pendingDone.length > 0) h.pendingDone.shift()!();
    assert.equal(Buffer.concat(h.delivered).length, 1000);
    assert.ok(h.delivered.length <= 2, `${h.delivered.length} chunks for 1000 1-byte frames`);
  });

  it('says whether bytes wait, and when bytes last moved', () => {
    const h = harness(1000);
    assert.equal(h.tunnel.hasBytesWaiting, false);
    const before = h.tunnel.lastMovedAt;
    h.tunnel.write(Buffer.alloc(1500, 1));
    assert.equal(h.tunnel.hasBytesWaiting, true, 'a read waits for credit');
    assert.ok(h.tunnel.lastMovedAt >= before);
    h.tunnel.handleFrame(encodeWindow(1500));
    assert.equal(h.tunnel.hasBytesWaiting, false);
    h.tunnel.handleFrame(encodeData(1, Buffer.from('x')));
    assert.equal(h.tunnel.hasBytesWaiting, true, 'a byte the local side has not written');
    h.pendingDone.shift()!();
    assert.equal(h.tunnel.hasBytesWaiting, false);
  });
});
