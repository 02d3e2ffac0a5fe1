import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { PresenceInfo } from '../../broker/wire/bus-messages.js';
import { claimsToken } from '../../broker/wire/identifiers.js';
import { Subjects } from '../../broker/wire/subjects.js';
import { eventually, Fleet } from '../helpers/fleet.js';
import { fakeHeartbeat } from '../helpers/heartbeats.js';

const heartbeat = (overrides: Partial<PresenceInfo>): Uint8Array =>
  fakeHeartbeat({ id: 'x', version: '9.9.9', heartbeatIntervalMs: 60_000, ...overrides });

describe('version skew', () => {
  const fleet = new Fleet();
  let nc: NatsConnection;
  before(async () => {
    await fleet.startNats();
    await fleet.frontend(['--server-id', 'fe-skew']);
    nc = await connect({ servers: fleet.nats.url });
  });
  after(async () => {
    await nc.close();
    await fleet.stop();
  });

  it('accepts a newer peer whose heartbeat carries fields this build does not know', async () => {
    // Field 99 (varint) appended: a field a future version might add.
    const future = Buffer.concat([heartbeat({ id: 'future-agent' }), Buffer.from([0x98, 0x06, 0x01])]);
    nc.publish(new Subjects('knats').presence('agent', 'future-agent', claimsToken('')), future);
    await eventually(() => fleet.frontends[0]!.debugState().agents === 1, 'the future agent is known');
  });

  it('ignores a peer that speaks an incompatible bus protocol', async () => {
    nc.publish(
      new Subjects('knats').presence('agent', 'ancient-agent', claimsToken('')),
      heartbeat({ id: 'ancient-agent', protocolVersion: 0 }),
    );
    await nc.flush();
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(fleet.frontends[0]!.debugState().agents, 1, 'only the compatible agent counts');
  });

  it('ignores unknown frame types on a tunnel subject', async () => {
    nc.publish(`knats.fe.fe-skew.unknown`, Buffer.from([0x7e, 1, 2, 3]));
    await nc.flush();
    assert.equal(fleet.frontends[0]!.debugState().tunnels, 0);
  });
});
