/**
 * Hostile input on the gRPC door and on the bus: each case gets its specific
 * error, the process stays up, and a concurrent healthy tunnel moves all its
 * bytes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { encodeData, FrameType } from '../../broker/wire/codec.js';
import {
  type ClientPacket,
  decodePacket,
  encodeDataPacket,
  encodePacket,
  PacketType,
  toNumber,
} from '../../frontend/client-packets.js';
import { proxyServiceDefinition } from '../../frontend/grpc-door.js';
import {
  type Destination,
  echoServer,
  hangingPort,
  randomBytesSeeded,
  sha256,
} from '../helpers/destinations.js';
import { eventually, Fleet, fetchText } from '../helpers/fleet.js';
import { besideHealthyTunnel, ProxyStreamClient, randomId } from '../helpers/proxy-client.js';

/** A ProxyService stream that sends and receives Packet bytes as they are, however they are laid out. */
function rawProxyCall(uds: string) {
  const Raw = grpc.makeGenericClientConstructor(proxyServiceDefinition, 'ProxyService');
  const raw = new Raw(`unix:${uds}`, grpc.credentials.createInsecure());
  const call = (raw as unknown as { Proxy(): grpc.ClientDuplexStream<Buffer, Buffer> }).Proxy();
  return { raw, call };
}

const varint = (value: number): number[] => {
  const out: number[] = [];
  for (; value >= 0x80; value = Math.floor(value / 128)) out.push((value % 128) | 0x80);
  out.push(value);
  return out;
};
const field = (tag: number, bytes: Buffer | number[]): Buffer =>
  Buffer.concat([Buffer.from([tag, ...varint(bytes.length)]), Buffer.from(bytes)]);

/**
 * Packet{DATA} bytes in layouts a client may send: the canonical one (the
 * door's fast path), an overlong connectID varint (fast path too), and
 * layouts only protobufjs reads (fields out of order, an unknown field, an
 * empty error, the type last).
 */
const DATA_LAYOUTS: ((id: number, data: Buffer) => Buffer)[] = [
  (id, data) => encodeDataPacket(id, data),
  (id, data) =>
    Buffer.concat([
      Buffer.from([0x08, 0x04]),
      field(0x22, [0x08, id | 0x80, 0x80, 0x00, ...field(0x1a, data)]),
    ]),
  (id, data) => Buffer.concat([Buffer.from([0x08, 0x04]), field(0x22, [...field(0x1a, data), 0x08, id])]),
  (id, data) =>
    Buffer.concat([Buffer.from([0x08, 0x04]), field(0x22, [0x08, id, ...field(0x1a, data), 0x20, 0x01])]),
  (id, data) =>
    Buffer.concat([Buffer.from([0x08, 0x04]), field(0x22, [0x08, id, 0x12, 0x00, ...field(0x1a, data)])]),
  (id, data) => Buffer.concat([field(0x22, [0x08, id, ...field(0x1a, data)]), Buffer.from([0x08, 0x04])]),
];

describe('hostile input on the gRPC door and the bus', () => {
  const fleet = new Fleet();
  let uds: string;
  let healthPort: number;
  let echo: Destination;
  let nc: NatsConnection;

  before(async () => {
    await fleet.startNats();
    const fe = await fleet.frontend([
      '--tunnel-window',
      '65536',
      '--max-pending-dials-per-stream',
      '8',
      '--backend-dial-timeout',
      '1s',
    ]);
    uds = fe.uds;
    healthPort = fe.healthPort;
    await fleet.agent(['--dial-timeout', '1s']);
    echo = await echoServer();
    nc = await connect({ servers: fleet.nats.url });
  });
  after(async () => {
    await nc.close();
    await echo.close();
    await fleet.stop();
  });

  const besideHealthy = (attack: () => Promise<void>) =>
    besideHealthyTunnel(`unix:${uds}`, echo.address, attack);

  const metric = async (pattern: RegExp) => {
    const { body } = await fetchText(healthPort, '/metrics');
    return Number(pattern.exec(body)?.[1] ?? 0);
  };

  it('garbage bytes on the gRPC stream end that stream only', async () => {
    await besideHealthy(async () => {
      const { raw, call } = rawProxyCall(uds);
      const ended = new Promise<string>((resolve) => {
        call.on('error', (err) => resolve(err.message));
        call.on('end', () => resolve('end'));
        call.on('data', () => {});
      });
      call.write(Buffer.from([0xff, 0xff, 0xff, 0xff]));
      assert.ok(await ended, 'the stream was ended by the server');
      raw.close();
    });
    assert.ok(
      (await metric(/knats_client_errors_total\{segment="from_client",reason="malformed_packet"\} (\d+)/)) >=
        1,
      'counted as a malformed packet',
    );
    // and in upstream's series, with the gRPC code grpc-go gives an undecodable message
    assert.ok(
      (await metric(
        /konnectivity_network_proxy_server_stream_errors_total\{segment="from_client",code="Internal",packet_type="Unknown"\} (\d+)/,
      )) >= 1,
      "counted in upstream's stream_errors_total",
    );
  });

  it('DATA in every layout a client may send reaches the destination byte-exact and in order', async () => {
    const { raw, call } = rawProxyCall(uds);
    const replies: ClientPacket[] = [];
    call.on('data', (bytes: Buffer) => replies.push(decodePacket(bytes)));
    call.on('error', () => {});
    call.write(
      encodePacket({
        type: PacketType.DIAL_REQ,
        dialRequest: { protocol: 'tcp', address: echo.address, random: 42 },
      }),
    );
    const dialed = await eventually(() => replies.find((p) => p.type === PacketType.DIAL_RSP), 'DIAL_RSP');
    assert.equal(dialed.dialResponse?.error, '');
    const id = toNumber(dialed.dialResponse?.connectID);
    assert.ok(id > 0 && id < 0x80, 'a one-byte connectID, as the layouts write it');
    const sizes = [1, 2, 127, 128, 32_640, 32_641, 65_536, 3, 100_000, 1];
    const sent: Buffer[] = [];
    for (let i = 0; i < 60; i++) {
      const chunk = randomBytesSeeded(sizes[i % sizes.length]!, i + 1);
      sent.push(chunk);
      call.write(DATA_LAYOUTS[i % DATA_LAYOUTS.length]!(id, chunk));
    }
    const expected = Buffer.concat(sent);
    const echoed = () =>
      Buffer.concat(
        replies.flatMap((p) =>
          p.type === PacketType.DATA && p.data?.data ? [Buffer.from(p.data.data)] : [],
        ),
      );
    await eventually(() => echoed().length >= expected.length, 'every byte echoed', 30_000);
    assert.equal(sha256(echoed()), sha256(expected), 'byte-exact and in order');
    assert.ok(!replies.some((p) => p.type === PacketType.CLOSE_RSP), 'the tunnel stayed open');
    call.end();
    raw.close();
  });

  it('unknown packet types are ignored and the stream stays usable', async () => {
    await besideHealthy(async () => {
      const client = new ProxyStreamClient(`unix:${uds}`);
      client.call.write({ type: 99 });
      client.call.write({ type: 6, drain: {} } as never);
      const dial = await client.dial(echo.address);
      assert.equal(dial.error, '');
      client.close();
    });
  });

  it('DATA and CLOSE_REQ for unknown connectIDs get a CLOSE_RSP error', async () => {
    await besideHealthy(async () => {
      const client = new ProxyStreamClient(`unix:${uds}`);
      client.send(4242, Buffer.from('nobody'));
      assert.match(await client.waitClosed(4242), /unknown connectID 4242/);
      client.closeRequest(777);
      assert.match(await client.waitClosed(777), /unknown connectID 777/);
      client.close();
    });
  });

  it('a flood of DIAL_REQs on one stream: the excess is refused at once', async () => {
    const hanging = await hangingPort();
    await besideHealthy(async () => {
      const client = new ProxyStreamClient(`unix:${uds}`);
      const answers = await Promise.all(
        Array.from({ length: 40 }, () => client.dial(`127.0.0.1:${hanging.port}`, randomId())),
      );
      const refused = answers.filter((a) => /KNATS_TOO_MANY_PENDING_DIALS/.test(a.error));
      const timedOut = answers.filter((a) => /KNATS_DIAL_TIMEOUT/.test(a.error));
      assert.equal(refused.length, 32, 'all beyond the per-stream limit of 8 are refused');
      assert.ok(
        refused.every((a) => a.ms < 500),
        'refused at once',
      );
      assert.equal(timedOut.length, 8, 'the 8 admitted dials end with the dial timeout');
      client.close();
    });
    hanging.close();
  });

  it('a duplicate random on one stream is refused', async () => {
    const hanging = await hangingPort();
    const client = new ProxyStreamClient(`unix:${uds}`);
    const random = randomId();
    const first = client.dial(`127.0.0.1:${hanging.port}`, random);
    const second = await client.dial(echo.address, random);
    assert.match(second.error, /already pending/);
    client.dialClose(random);
    client.close();
    void first;
    hanging.close();
  });

  /** Opens a victim tunnel and learns its frame subject on the frontend side from the bus. */
  async function victimTunnel() {
    const seen: { subject: string; seq: number }[] = [];
    const marker = `victim-${randomId()}`;
    const sub = nc.subscribe('knats.fe.*.*', {
      callback: (_err, msg) => {
        // The healthy tunnel's frames pass here too: the victim is the one that echoes its marker.
        const frame = Buffer.from(msg.data);
        if (frame[0] === FrameType.Data && frame.subarray(5).toString() === marker) {
          seen.push({ subject: msg.subject, seq: frame.readUInt32BE(1) });
        }
      },
    });
    const client = new ProxyStreamClient(`unix:${uds}`);
    const dial = await client.dial(echo.address);
    client.send(dial.connectID, Buffer.from(marker));
    await client.waitBytes(dial.connectID, marker.length);
    await nc.flush();
    const last = await eventually(() => seen.at(-1), 'a DATA frame of the victim on the bus');
    sub.unsubscribe();
    assert.equal(seen.length, 1, 'exactly one frame carried the marker');
    return { client, connectID: dial.connectID, subject: last.subject, lastSeq: last.seq };
  }

  it('a forged frame with a bad sequence number closes that tunnel with KNATS_SEQUENCE_GAP', async () => {
    await besideHealthy(async () => {
      const victim = await victimTunnel();
      nc.publish(victim.subject, encodeData(victim.lastSeq + 5, Buffer.from('forged')));
      assert.match(await victim.client.waitClosed(victim.connectID), /KNATS_SEQUENCE_GAP/);
      assert.ok(
        !victim.client.dataOf(victim.connectID).toString().includes('forged'),
        'no forged byte was delivered',
      );
      victim.client.close();
    });
  });

  it('an oversized frame beyond the credit window closes that tunnel with KNATS_CREDIT_VIOLATION', async () => {
    await besideHealthy(async () => {
      const victim = await victimTunnel();
      nc.publish(victim.subject, encodeData(victim.lastSeq + 1, Buffer.alloc(200 * 1024, 1)));
      assert.match(await victim.client.waitClosed(victim.connectID), /KNATS_CREDIT_VIOLATION/);
      victim.client.close();
    });
  });

  it('a truncated frame closes that tunnel with KNATS_MALFORMED_FRAME', async () => {
    await besideHealthy(async () => {
      const victim = await victimTunnel();
      nc.publish(victim.subject, Buffer.from([FrameType.Window, 1]));
      assert.match(await victim.client.waitClosed(victim.connectID), /KNATS_MALFORMED_FRAME/);
      victim.client.close();
    });
  });

  it('frames for unknown tunnels are counted and answered, and nothing leaks', async () => {
    nc.publish(`knats.fe.${fleet.frontends[0]!.id}.no-such-tunnel`, encodeData(1, Buffer.from('x')));
    await nc.flush();
    await eventually(
      async () => (await metric(/knats_unknown_tunnel_frames_total (\d+)/)) >= 1,
      'unknown tunnel frame counted',
    );
    await eventually(() => {
      const fe = fleet.frontends[0]!.debugState();
      const ag = fleet.agents[0]!.debugState();
      return fe.tunnels === 0 && fe.pendingDials === 0 && ag.tunnels === 0 && ag.sockets === 0;
    }, 'everything closed');
  });
});
