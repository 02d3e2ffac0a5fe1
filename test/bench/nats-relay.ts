/**
 * The smallest tunnel this design allows, for the round-trip floor with a
 * socket at each end: two processes and nats.js, nothing else (no frames,
 * credit, sequence numbers, dial protocol or policy).
 *
 *   node nats-relay.js front NATS_URL
 *       listens on a loopback port (printed as {"port": P}); each accepted
 *       connection gets an id, its bytes are published on floor.rt.ID.up and
 *       what arrives on floor.rt.ID.down is written back to it.
 *   node nats-relay.js back NATS_URL ECHO_PORT
 *       for each id seen on floor.rt.*.up opens a connection to ECHO_PORT,
 *       writes what arrives to it and publishes its bytes on floor.rt.ID.down.
 *
 * Only for the echo destination and small messages: no flow control, so a
 * bulk transfer would queue without bound.
 */
import net from 'node:net';
import { connect as natsConnect } from '@nats-io/transport-node';
import { stopWithParent } from './common.js';

async function front(url: string): Promise<number> {
  const nc = await natsConnect({ servers: url, name: 'bench-nats-relay-front' });
  let nextId = 0;
  const server = net.createServer({ noDelay: true }, (client) => {
    const id = ++nextId;
    const sub = nc.subscribe(`floor.rt.${id}.down`, {
      callback: (_err, msg) => {
        client.write(msg.data);
      },
    });
    client.on('data', (chunk: Buffer) => nc.publish(`floor.rt.${id}.up`, chunk));
    client.on('error', () => client.destroy());
    client.on('close', () => sub.unsubscribe());
  });
  await nc.flush();
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => resolve((server.address() as net.AddressInfo).port));
  });
}

async function back(url: string, echoPort: number): Promise<void> {
  const nc = await natsConnect({ servers: url, name: 'bench-nats-relay-back' });
  const upstreams = new Map<string, net.Socket>();
  nc.subscribe('floor.rt.*.up', {
    callback: (_err, msg) => {
      const id = msg.subject.split('.')[2]!;
      let upstream = upstreams.get(id);
      if (!upstream) {
        const socket = net.connect({ host: '127.0.0.1', port: echoPort, noDelay: true });
        socket.on('data', (chunk: Buffer) => nc.publish(`floor.rt.${id}.down`, chunk));
        socket.on('error', () => socket.destroy());
        socket.on('close', () => upstreams.delete(id));
        upstreams.set(id, socket);
        upstream = socket;
      }
      upstream.write(msg.data);
    },
  });
  await nc.flush();
}

async function main(): Promise<void> {
  const [role, url, echoPort] = process.argv.slice(2);
  if (role === 'front' && url) {
    process.stdout.write(`${JSON.stringify({ port: await front(url) })}\n`);
  } else if (role === 'back' && url && echoPort) {
    await back(url, Number(echoPort));
    process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  } else {
    throw new Error('usage: nats-relay.js front NATS_URL | nats-relay.js back NATS_URL ECHO_PORT');
  }
  stopWithParent(() => process.exit(0));
}

main().catch((err: unknown) => {
  process.stderr.write(`nats-relay: ${String(err)}\n`);
  process.exit(1);
});
