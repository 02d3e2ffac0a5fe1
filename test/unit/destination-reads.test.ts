/**
 * The agent reads a destination straight into DATA frames: one read is one
 * frame (no runt behind full frames) built around the read buffer without a
 * copy, and what the destination sends before the tunnel is bridged waits.
 * Real TCP sockets on loopback; the bus side is a recording publisher.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { bridgeSocket, connectDestination } from '../../agent/tcp-bridge.js';
import { silentLogger } from '../../broker/logging.js';
import { ReceiveBudget } from '../../broker/tunnel/credit.js';
import { Tunnel } from '../../broker/tunnel/tunnel.js';
import {
  DATA_HEADER_BYTES,
  decodeFrame,
  FrameType,
  MAX_DATA_PAYLOAD,
  SMALL_READ_BYTES,
} from '../../broker/wire/codec.js';

const settings = { window: 1 << 20, minWindow: 1 << 16, budget: 1 << 24 };

function recordingTunnel(frames: Buffer[]): Tunnel {
  const tunnel = new Tunnel({
    id: 't1',
    localSubject: 'x.ag.a.t1',
    credit: settings,
    budget: new ReceiveBudget(settings.budget),
    publisher: {
      maxDataPayload: MAX_DATA_PAYLOAD,
      publish: (_subject, frame) => frames.push(frame as Buffer),
    },
    logger: silentLogger(),
    hooks: { ended: () => {}, blockedChanged: () => {} },
    lingerMs: 1000,
  });
  tunnel.open('fe', 'x.fe.f.t1', 1 << 30, 2);
  return tunnel;
}

async function destination(
  onConnection: (socket: Socket) => void,
): Promise<{ port: number; close: () => void }> {
  const server = createServer(onConnection);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as { port: number }).port, close: () => server.close() };
}

/**
 * Connects to the destination, bridges the socket into a recording tunnel
 * `bridgeAfterMs` later, and returns the DATA frames once the destination ended.
 */
async function dataFramesFrom(port: number, bridgeAfterMs = 0): Promise<Buffer[]> {
  const frames: Buffer[] = [];
  const tunnel = recordingTunnel(frames);
  const socket: Socket = connectDestination({ host: '127.0.0.1', port, allowHalfOpen: true });
  await once(socket, 'connect');
  if (bridgeAfterMs > 0) await new Promise((resolve) => setTimeout(resolve, bridgeAfterMs));
  const ended = once(socket, 'end');
  bridgeSocket(tunnel, socket, () => {});
  await ended;
  socket.destroy();
  return frames.filter((frame) => frame[0] === FrameType.Data);
}

describe('destination reads', () => {
  it('turn each read into one DATA frame around the read buffer, bytes complete and in order', async () => {
    const payload = Buffer.alloc(4 << 20);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
    const sending = await destination((socket) => socket.end(payload));
    // The destination's bytes arrive before the bridge: they must wait, not be lost.
    const data = await dataFramesFrom(sending.port, 50);
    sending.close();

    const received = Buffer.concat(
      data.map((frame) => {
        const decoded = decodeFrame(frame);
        assert.ok(decoded?.type === FrameType.Data);
        return decoded.payload;
      }),
    );
    assert.ok(received.equals(payload), 'every byte, in order');
    for (const frame of data) {
      assert.ok(frame.length <= DATA_HEADER_BYTES + MAX_DATA_PAYLOAD);
      // A small read (the kernel's choice) is copied out of its read buffer instead (next test).
      if (frame.length < DATA_HEADER_BYTES + SMALL_READ_BYTES) continue;
      // Built in the read buffer itself: a copy would live in a buffer of its own size or in Node's pool.
      assert.equal(frame.byteOffset, 0, 'the frame starts at its read buffer');
      assert.equal(
        frame.buffer.byteLength,
        DATA_HEADER_BYTES + MAX_DATA_PAYLOAD,
        'the read buffer is the frame',
      );
    }
    // One frame per read: a read larger than a frame would leave runts behind full frames.
    const runtsBehindFullFrames = data.filter(
      (frame, i) =>
        i > 0 && frame.length < 1024 && data[i - 1]!.length === DATA_HEADER_BYTES + MAX_DATA_PAYLOAD,
    ).length;
    assert.ok(
      runtsBehindFullFrames <= data.length / 20,
      `${runtsBehindFullFrames} runts in ${data.length} frames`,
    );
  });

  it('pin about their own size: small reads do not each keep a whole read buffer alive', async () => {
    // nats.js keeps a published payload by reference until it flushes, and while the bus is
    // disconnected it flushes nothing (protocol.js flushPending) for up to the bus-lost time: every
    // frame sent meanwhile stays alive. A chatty destination (log or exec streams: many small reads)
    // must then cost about the bytes it sent, bounded by the window, not a read buffer per read.
    const writes = 200;
    // Each write its own bytes: a read buffer reused too early would show as wrong content.
    const pieces = Array.from({ length: writes }, (_, i) => Buffer.alloc(100 + (i % 7), i & 0xff));
    const chatty = await destination((socket) => {
      let n = 0;
      const next = () => {
        if (n++ === writes) {
          socket.end();
          return;
        }
        socket.write(pieces[n - 1]!);
        setTimeout(next, 1);
      };
      next();
    });
    const data = await dataFramesFrom(chatty.port);
    chatty.close();

    const sent = data.reduce((sum, frame) => sum + frame.length, 0);
    const received = Buffer.concat(data.map((frame) => frame.subarray(DATA_HEADER_BYTES)));
    assert.ok(received.equals(Buffer.concat(pieces)), 'every byte, in order');
    assert.ok(data.length > writes / 4, `small reads expected, got ${data.length} frames`);
    const pinned = new Set(data.map((frame) => frame.buffer)).values();
    let pinnedBytes = 0;
    for (const buffer of pinned) pinnedBytes += buffer.byteLength;
    assert.ok(
      pinnedBytes <= 4 * sent + 64 * 1024,
      `${data.length} frames of ${sent} bytes pin ${pinnedBytes} bytes of buffers`,
    );
  });
});
