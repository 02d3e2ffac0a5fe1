/**
 * Peer input must never throw where nobody catches (issue 12): the tunnel
 * host's publishes, its NATS callback and its timer work, against a real
 * nats-server. Peer ids are validated before they become subjects; these
 * guards are what is left if one ever slips through.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ErrorCode, type KnatsError } from '../../broker/errors.js';
import { silentLogger } from '../../broker/logging.js';
import { type LocalServer, startLocalServer } from '../../broker/nats-server/local-server.js';
import { defaultCreditSettings } from '../../broker/tunnel/credit.js';
import { defaultTunnelHostTiming, TunnelHost } from '../../broker/tunnel/tunnel-host.js';
import { encodePing } from '../../broker/wire/codec.js';
import { Subjects } from '../../broker/wire/subjects.js';
import { eventually } from '../helpers/fleet.js';

describe('tunnel host: peer-derived subjects cannot throw out of a callback or a timer', () => {
  const subjects = new Subjects('knats');
  let server: LocalServer;
  let nc: NatsConnection;
  let host: TunnelHost;
  const ended: { id: string; err: KnatsError | undefined }[] = [];

  before(async () => {
    server = await startLocalServer({});
    nc = await connect({ servers: server.url });
    host = new TunnelHost({
      nc,
      subscribeSubject: subjects.frontendTunnels('fe1'),
      peerFramePrefix: subjects.agentFramePrefix(),
      credit: defaultCreditSettings,
      timing: defaultTunnelHostTiming,
      logger: silentLogger(),
      onTunnelEnded: (tunnel, err) => ended.push({ id: tunnel.id, err }),
    });
  });
  after(async () => {
    await host.stop();
    await nc.close();
    await server.stop();
  });

  it('a publish nats.js refuses fails that tunnel only, and the process and its other tunnels carry on', async () => {
    host.create('broken', subjects.frontendTunnel('fe1', 'broken'), silentLogger());
    host.create('healthy', subjects.frontendTunnel('fe1', 'healthy'), silentLogger());
    // A subject built from an agent id with a space, as a hostile dial reply carried before replies were checked.
    assert.doesNotThrow(() => host.publish('knats.ag.a b.broken', encodePing(0)));
    await eventually(() => ended.some((e) => e.id === 'broken'), 'the broken tunnel ended');
    assert.equal(ended.find((e) => e.id === 'broken')?.err?.code, ErrorCode.BusLost);
    // A frame for it arriving now (the NATS callback) and the host's timer do not throw either.
    nc.publish(subjects.frontendTunnel('fe1', 'broken'), Buffer.from([0x7f]));
    await nc.flush();
    await new Promise((r) => setTimeout(r, 600));
    assert.ok(host.get('healthy'), 'the other tunnel is still open');
    assert.equal(host.get('broken'), undefined);
    assert.ok(!nc.isClosed());
  });
});
