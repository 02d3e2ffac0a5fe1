/**
 * The contract of broker/bus/nats-internals.ts with the installed nats.js:
 * a version inside the checked range, the internals there with the shape the
 * seam expects, the patched flush the one that runs on a live connection,
 * and its bytes on the wire exactly those of nats.js's own flush (the
 * fallback).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import {
  inboxPrefixOf,
  installVectoredFlush,
  NATS_CHECKED_VERSIONS,
  protocolOf,
  vectoredFlushCount,
} from '../../broker/bus/nats-internals.js';
import { type LocalServer, startLocalServer } from '../../broker/nats-server/local-server.js';
import { encodePooledData } from '../../broker/tunnel/frame-pool.js';
import { randomBytesSeeded } from '../helpers/destinations.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

function versionParts(version: string): number[] {
  const match = /^(\d+)\.(\d+)\.(\d+)/.exec(version);
  assert.ok(match, `a release version: ${version}`);
  return match.slice(1, 4).map(Number);
}

function compareVersions(a: string, b: string): number {
  const [x, y] = [versionParts(a), versionParts(b)];
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return 0;
}

/** A TCP hop in front of nats-server that keeps every byte each client connection sends. */
class RecordingProxy {
  private readonly server: Server;
  private readonly sessions: { chunks: Buffer[] }[] = [];
  port = 0;

  constructor(private readonly target: number) {
    this.server = createServer((client: Socket) => {
      const session = { chunks: [] as Buffer[] };
      this.sessions.push(session);
      const upstream = netConnect(this.target, '127.0.0.1');
      client.on('data', (chunk: Buffer) => {
        session.chunks.push(Buffer.from(chunk));
        upstream.write(chunk);
      });
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.on('error', () => {});
      upstream.on('error', () => {});
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
  }

  /** What the newest connection sent since the last take. */
  take(): Buffer {
    const session = this.sessions.at(-1)!;
    const bytes = Buffer.concat(session.chunks);
    session.chunks = [];
    return bytes;
  }

  close(): void {
    this.server.close();
  }
}

/** Publishes of every kind the bus makes and some it does not: sizes around the pack threshold, pooled frames, replies, headers, non-ASCII subjects. */
function publishVaried(nc: NatsConnection): void {
  const sizes = [0, 1, 100, 4095, 4096, 4097, 9000, 32_640, 70_000, 3, 200_000];
  sizes.forEach((n, i) => {
    const payload = randomBytesSeeded(n, i + 1);
    nc.publish(
      'contract.data',
      n >= 9000 && n <= 32_640 ? encodePooledData(0, payload).subarray(5) : payload,
    );
  });
  nc.publish('contract.reply', randomBytesSeeded(5000, 50), { reply: 'contract.inbox.x' });
  const h = headers();
  h.set('Knats-Test', 'contract');
  nc.publish('contract.headers', randomBytesSeeded(6000, 51), { headers: h });
  nc.publish('contract.grüße', Buffer.from('ünïcode'));
}

describe('nats.js internals contract (broker/bus/nats-internals.ts)', () => {
  let server: LocalServer;
  before(async () => {
    server = await startLocalServer();
  });
  after(async () => {
    await server.stop();
  });

  it('the installed nats.js is inside the checked version range', () => {
    for (const name of NATS_CHECKED_VERSIONS.packages) {
      const { version } = JSON.parse(readFileSync(`${ROOT}node_modules/${name}/package.json`, 'utf8')) as {
        version: string;
      };
      assert.ok(
        compareVersions(version, NATS_CHECKED_VERSIONS.from) >= 0 &&
          compareVersions(version, NATS_CHECKED_VERSIONS.below) < 0,
        `${name} ${version} is outside [${NATS_CHECKED_VERSIONS.from}, ${NATS_CHECKED_VERSIONS.below}): ` +
          'check nats-internals.ts against it, then widen the range',
      );
    }
  });

  it("package.json's spec installs nothing outside the checked range", () => {
    const { dependencies } = JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as {
      dependencies: Record<string, string>;
    };
    // `~X.Y.Z` takes patch releases only: the range ends below the next minor release.
    const [major, minor] = versionParts(NATS_CHECKED_VERSIONS.from);
    assert.equal(NATS_CHECKED_VERSIONS.below, `${major}.${(minor ?? 0) + 1}.0`);
    assert.equal(dependencies['@nats-io/transport-node'], `~${NATS_CHECKED_VERSIONS.from}`);
  });

  it('a live connection has the internals the seam reads and replaces, with their shape', async () => {
    const nc = await connect({ servers: server.url, inboxPrefix: 'contract_inbox' });
    try {
      const protocol = protocolOf(nc);
      assert.ok(protocol, 'nc.protocol with flushPending, sendCommand, outbound and transport');
      assert.ok(Array.isArray(protocol.outbound.buffers), 'outbound.buffers is an array');
      assert.equal(typeof protocol.outbound.byteLength, 'number');
      assert.equal(protocol.outbound.size(), protocol.outbound.byteLength, 'outbound.size() counts bytes');
      assert.equal(protocol.infoReceived, true, 'infoReceived once connected');
      assert.equal(protocol.connected, true, 'connected once connected');
      assert.equal(protocol.transport.isClosed, false, 'transport.isClosed on an open transport');
      assert.equal(typeof protocol.transport.socket?.cork, 'function', 'transport.socket is a net.Socket');
      assert.equal(inboxPrefixOf(nc), 'contract_inbox', 'options.inboxPrefix');
    } finally {
      await nc.close();
    }
  });

  it('the patched flush is the one that runs on a live connection', async () => {
    const nc = await connect({ servers: server.url });
    try {
      assert.equal(installVectoredFlush(nc), true);
      const before = vectoredFlushCount();
      nc.publish('contract.marker', randomBytesSeeded(10_000, 7));
      await nc.flush();
      assert.ok(vectoredFlushCount() > before, 'flushes went out through writePieces');
    } finally {
      await nc.close();
    }
  });

  it('puts on the wire exactly the bytes nats.js own flush (the fallback) does, and they arrive intact', async () => {
    const proxy = new RecordingProxy(server.port);
    await proxy.listen();
    const sub = await connect({ servers: server.url });
    try {
      const received: Buffer[] = [];
      sub.subscribe('contract.>', {
        callback: (_e, m) => {
          received.push(Buffer.from(m.data));
        },
      });
      await sub.flush();
      const wire = async (patched: boolean): Promise<Buffer> => {
        const nc = await connect({ servers: `127.0.0.1:${proxy.port}`, name: 'contract' });
        try {
          if (patched) assert.equal(installVectoredFlush(nc), true);
          await nc.flush();
          proxy.take();
          publishVaried(nc);
          await nc.flush();
          return proxy.take();
        } finally {
          await nc.close();
        }
      };
      const fallback = await wire(false);
      const patched = await wire(true);
      assert.ok(fallback.length > 300_000, `the fallback wrote the publishes (${fallback.length} bytes)`);
      assert.ok(
        patched.equals(fallback),
        `patched ${patched.length} bytes, fallback ${fallback.length} bytes`,
      );
      await sub.flush();
      const half = received.length / 2;
      assert.equal(half, 14);
      for (let i = 0; i < half; i++) assert.ok(received[i]!.equals(received[half + i]!), `message ${i}`);
    } finally {
      await sub.close();
      proxy.close();
    }
  });
});
