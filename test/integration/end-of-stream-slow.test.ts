/**
 * A side that pauses for longer than a few seconds after the tunnel ended
 * cleanly still gets every byte: the door and the agent end their sockets
 * only after what waits in Node's buffers went out, and give up (with a
 * reset) only on a peer that takes nothing for the linger time.
 */
import assert from 'node:assert/strict';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { randomBytesSeeded, sha256 } from '../helpers/destinations.js';
import { EosRig } from '../helpers/eos-scenarios.js';

const PAUSE_MS = 7000;
/** Less than one window (plus what the kernel buffers): the tunnel can end cleanly while the peer pauses. */
const BYTES = 250_007;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Reads a socket to its end; resolves with the bytes and whether it ended cleanly. */
function readAll(socket: Socket): Promise<{ data: Buffer; clean: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let clean = true;
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {
      clean = false;
    });
    socket.on('close', () => resolve({ data: Buffer.concat(chunks), clean }));
  });
}

describe('end of stream with a peer that pauses after the tunnel ended', () => {
  const rig = new EosRig();
  before(() => rig.start());
  after(() => rig.stop());

  it('a CONNECT client that half-closes and reads only after a long pause gets every byte', async () => {
    const download = randomBytesSeeded(BYTES, 11);
    const server = createServer((s) => s.end(download));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = `127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const client = netConnect({ path: rig.connectUds.uds, allowHalfOpen: true });
      client.write(`CONNECT ${address} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
      client.end();
      client.pause();
      await sleep(PAUSE_MS);
      const { data, clean } = await readAll(client.resume());
      assert.ok(clean, 'a clean end');
      const head = 'HTTP/1.1 200 Connection Established\r\n\r\n';
      assert.equal(data.subarray(0, head.length).toString('latin1'), head);
      assert.equal(sha256(data.subarray(head.length)), sha256(download), 'every byte of the download');
    } finally {
      server.close();
    }
  });

  it('a destination that half-closes and reads only after a long pause gets every byte of the upload', async () => {
    const upload = randomBytesSeeded(BYTES, 12);
    let received: Promise<{ data: Buffer; clean: boolean }> | undefined;
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => {
      s.end();
      received = sleep(PAUSE_MS).then(() => readAll(s.resume()));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = `127.0.0.1:${(server.address() as { port: number }).port}`;
    try {
      const client = netConnect({ path: rig.connectUds.uds, allowHalfOpen: true });
      client.write(`CONNECT ${address} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
      client.end(upload);
      client.resume();
      while (!received) await sleep(20);
      const { data, clean } = await received;
      assert.ok(clean, 'a clean end');
      assert.equal(sha256(data), sha256(upload), 'every byte of the upload');
      client.destroy();
    } finally {
      server.close();
    }
  });
});
