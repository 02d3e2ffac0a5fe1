import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  agentsForHost,
  candidatesFrom,
  FleetRoutes,
  type FleetView,
  MAX_AGENTS_PER_STRATEGY,
  SHUN_MS,
} from '../../frontend/router.js';

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

describe('FleetRoutes: the frontend chooses the agent for every strategy', () => {
  it('default offers every agent (identifiers or not), defaultRoute only those that claim it; draining never', () => {
    const fleet = new FakeFleet();
    fleet.beat('plain', '');
    fleet.beat('router', 'default-route=true');
    fleet.beat('named', 'host=x.example');
    fleet.beat('leaving', 'default-route=true', 0, true);
    const routes = new FleetRoutes(fleet, seeded());
    assert.deepEqual(routes.agentsFor('default', 'h').sort(), ['named', 'plain', 'router']);
    assert.deepEqual(routes.agentsFor('defaultRoute', 'h'), ['router']);
    assert.deepEqual(routes.agentsFor('destHost', 'x.example'), ['named']);
  });

  it('tries at most MAX_AGENTS_PER_STRATEGY of 20,000 agents, in a few microseconds per dial', () => {
    const fleet = new FakeFleet();
    for (let i = 0; i < 20_000; i++) fleet.beat(`a${i}`, '');
    const routes = new FleetRoutes(fleet, seeded());
    routes.agentsFor('default', 'h'); // the table, built once
    const started = performance.now();
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const picks = routes.agentsFor('default', 'h');
      assert.equal(picks.length, MAX_AGENTS_PER_STRATEGY);
      assert.equal(new Set(picks).size, picks.length, 'an agent once per dial');
      seen.add(picks[0]!);
    }
    const perDialUs = ((performance.now() - started) / 1000) * 1000;
    assert.ok(seen.size > 900, `first picks spread over ${seen.size} agents`);
    assert.ok(perDialUs < 500, `${perDialUs.toFixed(0)} µs per dial`);
  });

  it('balances by the larger of reported and local load: 300 dials to 3 agents, one of them reporting 0 always', () => {
    const fleet = new FakeFleet();
    for (const id of ['a', 'b', 'liar']) fleet.beat(id, '');
    const local = new Map<string, number>();
    const routes = new FleetRoutes(fleet, seeded(), (id) => local.get(id) ?? 0);
    for (let i = 0; i < 300; i++) {
      const first = routes.agentsFor('default', 'h')[0]!;
      local.set(first, (local.get(first) ?? 0) + 1);
      // Honest agents report what they hold (a few beats late); the liar reports nothing.
      if (i % 50 === 49) for (const id of ['a', 'b']) fleet.beat(id, '', local.get(id) ?? 0);
    }
    const counts = [...local.values()];
    assert.equal(counts.length, 3);
    const ratio = Math.max(...counts) / Math.min(...counts);
    assert.ok(
      ratio <= 1.1,
      `tunnels per agent ${JSON.stringify(Object.fromEntries(local))}: max/min ${ratio}`,
    );
  });

  it('an agent that let a dial down is offered dials last for SHUN_MS, then again as before', () => {
    const fleet = new FakeFleet();
    fleet.beat('bad', '');
    fleet.beat('good', '');
    const routes = new FleetRoutes(fleet, seeded());
    const now = Date.now();
    routes.shun('bad', now);
    for (let i = 0; i < 50; i++) assert.deepEqual(routes.agentsFor('default', 'h'), ['good', 'bad']);
    routes.shun('other', now + SHUN_MS); // expires 'bad' on the way
    const firsts = new Set(Array.from({ length: 50 }, () => routes.agentsFor('default', 'h')[0]));
    assert.deepEqual([...firsts].sort(), ['bad', 'good']);
  });
});

describe('FleetRoutes: agents that answered lately back up a random pick', () => {
  it('among 4,000 agents that never answer, the one that answered is tried second, and not after it fails', () => {
    const fleet = new FakeFleet();
    for (let i = 0; i < 4000; i++) fleet.beat(`fake${i}`, '');
    fleet.beat('real', 'default-route=true');
    const routes = new FleetRoutes(fleet, seeded());
    routes.vouch('real');
    for (let i = 0; i < 20; i++) {
      const picks = routes.agentsFor('default', 'h');
      if (picks[0] !== 'real') assert.equal(picks[1], 'real');
      assert.equal(picks.filter((id) => id === 'real').length, 1, 'once per dial');
    }
    assert.deepEqual(routes.agentsFor('defaultRoute', 'h'), ['real']);
    routes.shun('real');
    assert.ok(
      routes
        .agentsFor('default', 'h')
        .slice(0, 2)
        .every((id) => id !== 'real'),
      'a shunned agent loses its vouch',
    );
  });
});
