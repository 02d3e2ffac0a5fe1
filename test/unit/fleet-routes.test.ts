import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { agentsForHost, candidatesFrom, FleetRoutes, type FleetView } from '../../frontend/router.js';

type PeerInfo = ReturnType<FleetView['snapshot']>[number]['info'];

/** A presence table by hand: `snapshot()` calls are counted, `beat()` bumps the version as a heartbeat does. */
class FakeFleet implements FleetView {
  version = 0;
  snapshots = 0;
  private readonly peers = new Map<string, PeerInfo>();
  beat(id: string, identifiers: string, openTunnels = 0, draining = false, role = 'agent'): void {
    this.peers.set(id, { id, role, identifiers, draining, openTunnels });
    this.version++;
  }
  snapshot() {
    this.snapshots++;
    return [...this.peers.values()].map((info) => ({ info }));
  }
}

/** A fixed sequence of "random" numbers, so two pickers make the same choices. */
function seeded(): () => number {
  let seed = 7;
  return () => {
    seed = (seed * 16807) % 2147483647;
    return seed / 2147483647;
  };
}

describe('FleetRoutes: destHost over an index built when presence changes', () => {
  it('answers as the per-dial scan does, for names, addresses, networks and both families', () => {
    const fleet = new FakeFleet();
    fleet.beat('wide', 'cidr=10.0.0.0/8', 3);
    fleet.beat('narrow', 'cidr=10.1.0.0/16&host=Api.Example', 1);
    fleet.beat('exact', 'ipv4=10.1.2.3&cidr=10.0.0.0/8', 2);
    fleet.beat('v6', 'cidr=fd00::/8&ipv6=fd00::5');
    fleet.beat('gone-soon', 'cidr=10.0.0.0/8', 0, true);
    fleet.beat('fe', '', 0, false, 'frontend');
    const routes = new FleetRoutes(fleet, seeded());
    const scan = seeded();
    for (const host of [
      '10.1.2.3',
      '10.1.9.9',
      '10.200.0.1',
      'fd00::5',
      'fd12::1',
      'api.example',
      '192.168.0.1',
      'other.example',
    ]) {
      assert.deepEqual(
        routes.agentsForHost(host).sort(),
        agentsForHost(candidatesFrom(fleet.snapshot()), host, scan).sort(),
        host,
      );
    }
    assert.equal(routes.agentsForHost('10.1.2.3')[0], 'exact', 'an exact address first');
    assert.ok(!routes.agentsForHost('10.9.9.9').includes('gone-soon'), 'a draining agent takes no dials');
  });

  it('reads presence once per change, not per dial, and sees the next heartbeat', () => {
    const fleet = new FakeFleet();
    fleet.beat('a', 'ipv4=10.0.0.1');
    const routes = new FleetRoutes(fleet);
    for (let i = 0; i < 100; i++) assert.deepEqual(routes.agentsForHost('10.0.0.1'), ['a']);
    assert.equal(fleet.snapshots, 1, 'one table for a hundred dials');
    fleet.beat('b', 'ipv4=10.0.0.1');
    fleet.beat('a', 'ipv4=10.0.0.1', 0, true);
    assert.deepEqual(routes.agentsForHost('10.0.0.1'), ['b'], 'a new agent and a draining one, at once');
    assert.equal(fleet.snapshots, 2);
  });
});
