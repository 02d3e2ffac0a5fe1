import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseAgentIdentifiers } from '../../broker/wire/identifiers.js';
import { Subjects } from '../../broker/wire/subjects.js';
import {
  type AgentCandidate,
  agentsForHost,
  candidatesFrom,
  compileRoutes,
  DialDestination,
  dialTargets,
  MAX_AGENTS_PER_STRATEGY,
  matchSpecificity,
} from '../../frontend/router.js';

const agent = (id: string, ids: string, load = 0): AgentCandidate => ({
  id,
  routes: compileRoutes(parseAgentIdentifiers(ids)),
  load,
});

describe('destHost matching', () => {
  it('matches host names case-insensitively and IPs exactly, in any notation', () => {
    const ids = compileRoutes(parseAgentIdentifiers('host=Node-1.example&ipv4=10.0.0.5&ipv6=fd00::5'));
    const match = (host: string) => matchSpecificity(ids, new DialDestination(host));
    assert.ok(match('node-1.EXAMPLE') > 0);
    assert.ok(match('10.0.0.5') > 0);
    assert.ok(match('fd00:0:0::5') > 0);
    assert.equal(match('10.0.0.6'), 0);
    assert.equal(match('node-2.example'), 0);
  });

  it('prefers the most specific CIDR, and an exact IP over any CIDR', () => {
    const agents = [
      agent('wide', 'cidr=10.0.0.0/8'),
      agent('narrow', 'cidr=10.1.0.0/16'),
      agent('exact', 'ipv4=10.1.2.3'),
      agent('v6', 'cidr=fd00::/8'),
    ];
    assert.deepEqual(agentsForHost(agents, '10.1.2.3'), ['exact', 'narrow', 'wide']);
    assert.deepEqual(agentsForHost(agents, '10.1.9.9'), ['narrow', 'wide']);
    assert.deepEqual(agentsForHost(agents, '10.200.0.1'), ['wide']);
    assert.deepEqual(agentsForHost(agents, 'fd12::1'), ['v6']);
    assert.deepEqual(agentsForHost(agents, '192.168.0.1'), []);
    assert.deepEqual(agentsForHost(agents, 'some.host'), []);
  });

  it('a /0 CIDR matches everything of its family', () => {
    assert.deepEqual(agentsForHost([agent('all', 'cidr=0.0.0.0/0')], '8.8.8.8'), ['all']);
  });

  it('spreads equally specific matches with the power of two choices', () => {
    const agents = [
      agent('a', 'cidr=10.0.0.0/8', 5),
      agent('b', 'cidr=10.0.0.0/8', 1),
      agent('c', 'cidr=10.0.0.0/8', 9),
    ];
    const firsts = new Map<string, number>();
    let seed = 1;
    const random = () => {
      seed = (seed * 16807) % 2147483647;
      return seed / 2147483647;
    };
    for (let i = 0; i < 3000; i++) {
      const order = agentsForHost(agents, '10.0.0.1', random);
      assert.equal(order.length, 3, 'every match stays as a fallback');
      firsts.set(order[0]!, (firsts.get(order[0]!) ?? 0) + 1);
    }
    // With two random choices, the least loaded wins 2/3 of the time, the most loaded never.
    assert.ok((firsts.get('b') ?? 0) > 1700, `least loaded first ${firsts.get('b')} times`);
    assert.ok((firsts.get('a') ?? 0) > 700, `middle first ${firsts.get('a')} times`);
    assert.equal(firsts.get('c') ?? 0, 0);
  });

  it('tries at most MAX_AGENTS_PER_STRATEGY agents for one dial, the most specific first', () => {
    const agents = Array.from({ length: 50 }, (_, i) => agent(`wide${i}`, 'cidr=0.0.0.0/0'));
    agents.push(agent('exact', 'ipv4=10.1.2.3'));
    const order = agentsForHost(agents, '10.1.2.3');
    assert.equal(order.length, MAX_AGENTS_PER_STRATEGY);
    assert.equal(order[0], 'exact');
  });

  it('routes a dial among 4,096 catch-all agents in a few milliseconds (matchers compiled per heartbeat, not per dial)', () => {
    const peers = Array.from({ length: 4096 }, (_, i) => ({
      info: {
        id: `fake${i}`,
        role: 'agent',
        identifiers: `cidr=0.0.0.0/0&host=h${i}`,
        draining: false,
        openTunnels: 0,
      },
    }));
    candidatesFrom(peers); // the heartbeats: compiled once
    const started = performance.now();
    const dials = 20;
    for (let i = 0; i < dials; i++) agentsForHost(candidatesFrom(peers), `10.0.0.${i}`);
    const perDialMs = (performance.now() - started) / dials;
    // Measured ~2 ms per dial on a 2-core machine, where building matchers per dial took ~140 ms.
    assert.ok(perDialMs < 50, `${perDialMs.toFixed(1)} ms per dial`);
  });

  it('builds candidates from presence, skipping draining agents, frontends and agents known only from a dial', () => {
    const peer = (id: string, role: string, identifiers: string, draining = false, provisional = false) => ({
      info: { id, role, identifiers, draining, openTunnels: 0 },
      provisional,
    });
    const list = candidatesFrom([
      peer('a', 'agent', 'host=x'),
      peer('b', 'agent', 'host=x', true),
      peer('f', 'frontend', ''),
      peer('c', 'agent', ''),
      peer('d', 'agent', 'future-key=1'),
      peer('e', 'agent', '', false, true),
    ]);
    assert.deepEqual(
      list.map((c) => c.id),
      ['a', 'c', 'd'],
    );
    // Without identifiers (or with ones this build cannot read): the default strategy only.
    assert.equal(list[1]!.routes.hosts.size + list[2]!.routes.addresses.length, 0);
    assert.ok(!list[2]!.routes.defaultRoute);
  });
});

describe('strategy order', () => {
  const subjects = new Subjects('p');
  const picks: Record<string, string[]> = {
    destHost: [],
    defaultRoute: ['r1', 'a1'],
    default: ['a1', 'a2', 'r1'],
  };
  it('tries strategies in the configured order, each agent once, always by its own subject', () => {
    const targets = dialTargets(['destHost', 'defaultRoute', 'default'], subjects, (s) => picks[s]!, 'h');
    assert.deepEqual(
      targets.map((t) => [t.strategy, t.subject]),
      [
        ['defaultRoute', 'p.dial.agent.r1'],
        ['defaultRoute', 'p.dial.agent.a1'],
        ['default', 'p.dial.agent.a2'],
      ],
    );
    assert.deepEqual(
      targets.map((t) => t.agentId),
      ['r1', 'a1', 'a2'],
    );
    assert.deepEqual(
      dialTargets(['destHost'], subjects, (s) => picks[s]!, 'h'),
      [],
    );
  });
});
