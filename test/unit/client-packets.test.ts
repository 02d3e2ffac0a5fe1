/**
 * The gRPC door's hand-written DATA path against protobufjs, byte for byte
 * both ways: what the fast encoder writes is what protobufjs writes, and
 * whatever the fast decoder accepts, protobufjs reads the same way (anything
 * else is left to protobufjs). Seeded loops, so a failure replays.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import Long from 'long';
import protobuf from 'protobufjs';
import { protoDir } from '../../broker/wire/bus-messages.js';
import {
  DataToClient,
  decodeDataPacket,
  encodeDataPacket,
  PacketType,
  serializeToClient,
} from '../../frontend/client-packets.js';

const packetType = protobuf.loadSync(`${protoDir}client.proto`).lookupType('Packet');

function reference(message: object): Buffer {
  const bytes = packetType.encode(packetType.fromObject(message)).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** xorshift32: deterministic, so every run checks the same cases. */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
}

const EDGE_IDS = [1, 127, 128, 16_383, 16_384, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 49 - 1, 2 ** 53 - 1];
const EDGE_LENGTHS = [0, 1, 127, 128, 16_383, 16_384, 65_536, 70_001];

function cases(count: number, seed: number): { connectID: number; data: Buffer }[] {
  const next = random(seed);
  const out: { connectID: number; data: Buffer }[] = [];
  for (const connectID of EDGE_IDS)
    for (const length of EDGE_LENGTHS) out.push({ connectID, data: Buffer.alloc(length, connectID & 0xff) });
  for (let i = 0; i < count; i++) {
    const connectID = Math.floor(next() * 2 ** (1 + Math.floor(next() * 53))) || 1;
    const data = Buffer.alloc(Math.floor(next() ** 3 * 70_000));
    for (let j = 0; j < data.length; j += 97) data[j] = Math.floor(next() * 256);
    out.push({ connectID, data });
  }
  return out;
}

function referenceDecode(bytes: Buffer): { connectID: number; data: Buffer } {
  const packet = packetType.toObject(packetType.decode(bytes), {
    longs: String,
    enums: String,
    bytes: Buffer,
  }) as {
    type?: string | number;
    data?: { connectID?: string; data?: Buffer };
  };
  assert.equal(packet.type, 'DATA');
  return { connectID: Number(packet.data?.connectID ?? 0), data: packet.data?.data ?? Buffer.alloc(0) };
}

describe('gRPC DATA fast path', () => {
  it('encodes byte for byte what protobufjs encodes', () => {
    for (const { connectID, data } of cases(500, 7)) {
      // Like Go's encoder (and proto3), empty bytes are left out.
      const message = { type: PacketType.DATA, data: data.length ? { connectID, data } : { connectID } };
      assert.deepEqual(encodeDataPacket(connectID, data), reference(message), `connectID ${connectID}`);
    }
  });

  it('the door serializer writes DATA byte for byte as protobufjs does, into one reused buffer', () => {
    let previous: Buffer | undefined;
    for (const { connectID, data } of cases(200, 13)) {
      const message = { type: PacketType.DATA, data: data.length ? { connectID, data } : { connectID } };
      const serialized = serializeToClient(new DataToClient(connectID, data));
      assert.deepEqual(serialized, reference(message), `connectID ${connectID}`);
      // grpc-js copies the result at once: the next packet reuses the memory (unless it needs more).
      if (previous && serialized.length <= previous.buffer.byteLength) {
        assert.ok(serialized.buffer === previous.buffer, 'the scratch buffer is reused');
      }
      previous = serialized;
    }
    const control = encodeDataPacket(5, Buffer.from('as is'));
    assert.equal(serializeToClient(control), control, 'an encoded packet passes through');
  });

  it('decodes what protobufjs encodes, to the same values, as views into the bytes', () => {
    for (const { connectID, data } of cases(500, 11)) {
      const bytes = reference({ type: PacketType.DATA, data: { connectID, data } });
      const fast = decodeDataPacket(bytes);
      if (connectID >= 2 ** 49) {
        // Varints past 7 bytes are left to protobufjs (it keeps int64 exact).
        if (!fast) continue;
      }
      assert.ok(fast, `connectID ${connectID}, ${data.length} bytes`);
      assert.deepEqual({ connectID: fast.connectID, data: Buffer.from(fast.data) }, referenceDecode(bytes));
      if (data.length > 0) assert.equal(fast.data.buffer, bytes.buffer, 'no copy');
    }
  });

  it('leaves every other layout to protobufjs', () => {
    const data = Buffer.from('payload');
    const id = Long.fromNumber(5);
    const others: [string, Buffer][] = [
      ['an error field', reference({ type: PacketType.DATA, data: { connectID: 5, error: 'x', data } })],
      ['a negative connectID', reference({ type: PacketType.DATA, data: { connectID: -1, data } })],
      [
        'a connectID past 2^53',
        reference({ type: PacketType.DATA, data: { connectID: Long.MAX_VALUE, data } }),
      ],
      ['another packet type', reference({ type: PacketType.CLOSE_REQ, closeRequest: { connectID: id } })],
      // data before connectID, type after the payload, an unknown field, a repeated field
      ['data before connectID', Buffer.from([0x08, 0x04, 0x22, 0x0b, 0x1a, 0x07, ...data, 0x08, 0x05])],
      ['type after the payload', Buffer.from([0x22, 0x0b, 0x08, 0x05, 0x1a, 0x07, ...data, 0x08, 0x04])],
      [
        'an unknown field in Data',
        Buffer.from([0x08, 0x04, 0x22, 0x0b, 0x08, 0x05, 0x1a, 0x05, 1, 2, 3, 4, 5, 0x20, 0x01]),
      ],
      [
        'an unknown field in Packet',
        Buffer.concat([reference({ type: 4, data: { connectID: 5, data } }), Buffer.from([0x48, 0x01])]),
      ],
      ['a repeated connectID', Buffer.from([0x08, 0x04, 0x22, 0x04, 0x08, 0x05, 0x08, 0x06])],
    ];
    for (const [what, bytes] of others) {
      assert.equal(decodeDataPacket(bytes), undefined, what);
      packetType.decode(bytes); // and protobufjs reads it
    }
  });

  it('never disagrees with protobufjs on damaged packets', () => {
    const next = random(23);
    for (const { connectID, data } of cases(300, 29)) {
      const bytes = Buffer.from(reference({ type: PacketType.DATA, data: { connectID, data } }));
      const damaged =
        next() < 0.5 ? bytes.subarray(0, Math.floor(next() * bytes.length)) : Buffer.from(bytes);
      if (damaged.length === bytes.length) {
        damaged[Math.floor(next() * Math.min(damaged.length, 16))] = Math.floor(next() * 256);
      }
      const fast = decodeDataPacket(damaged);
      if (!fast) continue;
      assert.deepEqual({ connectID: fast.connectID, data: Buffer.from(fast.data) }, referenceDecode(damaged));
    }
  });
});
