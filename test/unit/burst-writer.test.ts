/**
 * A burst of frames for one socket leaves in one writev with one completion
 * callback, and a flush before end() keeps every byte. Real loopback sockets.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { BurstWriter } from '../../broker/tunnel/burst-writer.js';

async function socketPair(): Promise<{ client: Socket; received: Promise<Buffer>; close: () => void }> {
  let resolveReceived: (bytes: Buffer) => void = () => {};
  const received = new Promise<Buffer>((resolve) => {
    resolveReceived = resolve;
  });
  const server = createServer((peer) => {
    const chunks: Buffer[] = [];
    peer.on('data', (chunk: Buffer) => chunks.push(chunk));
    peer.on('end', () => {
      resolveReceived(Buffer.concat(chunks));
      peer.end();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = connect((server.address() as { port: number }).port, '127.0.0.1');
  await once(client, 'connect');
  return { client, received, close: () => server.close() };
}

/** Counts the socket's writes to libuv: one _writev (or _write) call per batch. */
function countWrites(socket: Socket): { writev: number[]; write: number } {
  const counts = { writev: [] as number[], write: 0 };
  const internals = socket as unknown as {
    _writev: (chunks: unknown[], cb: unknown) => void;
    _write: (chunk: unknown, encoding: unknown, cb: unknown) => void;
  };
  const writev = internals._writev.bind(socket);
  const write = internals._write.bind(socket);
  internals._writev = (chunks, cb) => {
    counts.writev.push(chunks.length);
    writev(chunks, cb);
  };
  internals._write = (chunk, encoding, cb) => {
    counts.write++;
    write(chunk, encoding, cb);
  };
  return counts;
}

describe('burst writer', () => {
  it('sends one burst in one writev and reports its bytes once', async () => {
    const { client, received, close } = await socketPair();
    const counts = countWrites(client);
    const reports: number[] = [];
    const writer = new BurstWriter(client, (bytes) => reports.push(bytes));
    const chunks = Array.from({ length: 8 }, (_, i) => Buffer.alloc(1000 + i, i));
    for (const chunk of chunks) writer.write(chunk);
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(counts.writev, [8], 'one writev of the whole burst');
    assert.equal(counts.write, 0);
    assert.deepEqual(reports, [chunks.reduce((n, c) => n + c.length, 0)]);
    client.end();
    assert.ok((await received).equals(Buffer.concat(chunks)));
    close();
  });

  it('writes a burst at once when flushed before the socket ends', async () => {
    const { client, received, close } = await socketPair();
    const errors: Error[] = [];
    client.on('error', (err) => errors.push(err));
    const writer = new BurstWriter(client, () => {});
    writer.write(Buffer.from('first '));
    writer.write(Buffer.from('second'));
    writer.flush();
    client.end();
    assert.equal((await received).toString(), 'first second');
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(errors, [], 'the scheduled flush finds nothing left to write');
    close();
  });

  it('a socket destroyed in the middle of a burst (a client reset): its bytes are reported, no error, no cork left', async () => {
    const { client, close } = await socketPair();
    const errors: Error[] = [];
    client.on('error', (err) => errors.push(err));
    const reports: number[] = [];
    const writer = new BurstWriter(client, (bytes) => reports.push(bytes));
    writer.write(Buffer.alloc(10));
    writer.write(Buffer.alloc(20));
    client.destroy();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(reports, [30], 'the credit of the dropped bytes comes back');
    assert.deepEqual(errors, []);
    assert.equal(client.writableCorked, 0);
    close();
  });
});
