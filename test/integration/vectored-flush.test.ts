import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { installVectoredFlush } from '../../broker/bus/nats-internals.js';
import { writePieces } from '../../broker/bus/vectored-flush.js';
import { type LocalServer, startLocalServer } from '../../broker/nats-server/local-server.js';
import { encodePooledData } from '../../broker/tunnel/frame-pool.js';
import { randomBytesSeeded } from '../helpers/destinations.js';

async function socketPair(): Promise<{ client: Socket; server: Socket; close(): void }> {
  const listener = createServer();
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const { port } = listener.address() as { port: number };
  const accepted = once(listener, 'connection');
  const client = netConnect(port, '127.0.0.1');
  const [server] = (await accepted) as [Socket];
  return {
    client,
    server,
    close: () => {
      client.destroy();
      server.destroy();
      listener.close();
    },
  };
}

describe('vectored flush', () => {
  let server: LocalServer;
  before(async () => {
    server = await startLocalServer();
  });
  after(async () => {
    await server.stop();
  });

  it('writePieces writes the pieces in order, byte for byte', async () => {
    const pair = await socketPair();
    const pieces = [
      Buffer.from('PUB a 3\r\n'),
      Buffer.from('abc'),
      randomBytesSeeded(40_000, 3),
      Buffer.from('\r\n'),
      Buffer.from('x'),
      randomBytesSeeded(5000, 4),
      Buffer.from('tail'),
    ];
    const expected = Buffer.concat(pieces);
    const received: Buffer[] = [];
    let bytes = 0;
    const done = new Promise<void>((resolve) =>
      pair.server.on('data', (chunk: Buffer) => {
        received.push(chunk);
        bytes += chunk.length;
        if (bytes >= expected.length) resolve();
      }),
    );
    writePieces(pair.client, pieces);
    await done;
    assert.ok(Buffer.concat(received).equals(expected));
    pair.close();
  });

  it('is installed on this nats.js, and messages of every size arrive intact and in order', async () => {
    const pub: NatsConnection = await connect({ servers: server.url });
    const sub: NatsConnection = await connect({ servers: server.url });
    try {
      assert.equal(installVectoredFlush(pub), true, 'the nats.js internals it relies on are there');
      const sizes = [0, 1, 100, 4095, 4096, 9000, 32_640, 70_000, 3, 32_000, 0, 200_000];
      const rounds = 40;
      // Different bytes in every round: a pooled buffer reused before its frame was written would show.
      const payloads = Array.from({ length: rounds }, (_, r) =>
        sizes.map((n, i) => randomBytesSeeded(n, r * 100 + i + 1)),
      ).flat();
      const got: Buffer[] = [];
      const all = new Promise<void>((resolve) => {
        sub.subscribe('vf.test', {
          callback: (_err, msg) => {
            got.push(Buffer.from(msg.data));
            if (got.length === payloads.length) resolve();
          },
        });
      });
      await sub.flush();
      // One synchronous burst of about 14 MB, more than the socket takes at once, so most writes complete
      // later; frames of pooled size go in pooled buffers, which return to the pool only once written.
      for (const p of payloads) {
        pub.publish(
          'vf.test',
          p.length >= 9000 && p.length <= 32_640 ? encodePooledData(0, p).subarray(5) : p,
        );
      }
      await all;
      for (let i = 0; i < got.length; i++) assert.ok(got[i]!.equals(payloads[i]!), `message ${i}`);
    } finally {
      await pub.close();
      await sub.close();
    }
  });

  it('encodes protocol lines as UTF-8, as nats.js does: a subject with non-ASCII characters still works', async () => {
    const pub: NatsConnection = await connect({ servers: server.url });
    const sub: NatsConnection = await connect({ servers: server.url });
    try {
      assert.equal(installVectoredFlush(pub), true);
      const got = new Promise<string>((resolve) =>
        sub.subscribe('vf.grüße.ünïcode', { callback: (_e, m) => resolve(m.subject) }),
      );
      await sub.flush();
      pub.publish('vf.grüße.ünïcode', Buffer.from('x'));
      assert.equal(await got, 'vf.grüße.ünïcode');
    } finally {
      await pub.close();
      await sub.close();
    }
  });

  it('leaves a connection without the nats.js internals it relies on as it is', () => {
    const stranger = { protocol: { flushPending: () => {} } } as unknown as NatsConnection;
    assert.equal(installVectoredFlush(stranger), false);
  });

  it('keeps working across a reconnect: what is published while the server is down arrives after it', async () => {
    const local = await startLocalServer();
    const port = local.port;
    const pub = await connect({ servers: local.url, reconnectTimeWait: 50, maxReconnectAttempts: -1 });
    try {
      assert.equal(installVectoredFlush(pub), true);
      local.kill();
      await local.exited;
      const payload = randomBytesSeeded(50_000, 9);
      pub.publish('vf.later', payload);
      const again = await startLocalServer({ port });
      try {
        const sub = await connect({ servers: again.url });
        const got = new Promise<Buffer>((resolve) =>
          sub.subscribe('vf.after', { callback: (_e, m) => resolve(Buffer.from(m.data)) }),
        );
        await sub.flush();
        // Published until it arrives: the publisher reconnects on its own, then flushes with writev again.
        const timer = setInterval(() => pub.publish('vf.after', payload), 50);
        try {
          assert.ok((await got).equals(payload));
        } finally {
          clearInterval(timer);
        }
        await sub.close();
      } finally {
        await again.stop();
      }
    } finally {
      await pub.close();
    }
  });
});
