import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { RunningAgent } from '../../agent/agent.js';
import { cliPath, eventually, Fleet, TEST_ALLOWED_DESTINATIONS } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const run = promisify(execFile);

/** An echo destination on a given loopback address that remembers where each connection came from. */
async function destinationOn(host: string) {
  const remotePorts: number[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    remotePorts.push(s.remotePort!);
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    address: `${host}:${port}`,
    remotePorts,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Dials, moves a few bytes, and returns the id of the agent whose socket reached the destination. */
async function servedBy(
  fleet: Fleet,
  uds: string,
  dest: Awaited<ReturnType<typeof destinationOn>>,
): Promise<string> {
  const client = new ProxyStreamClient(`unix:${uds}`);
  try {
    const dial = await client.dial(dest.address);
    assert.equal(dial.error, '', `dial to ${dest.address}`);
    client.send(dial.connectID, Buffer.from('who'));
    await client.waitBytes(dial.connectID, 3);
    const port = dest.remotePorts.at(-1)!;
    const agent = fleet.agents.find((a) => (a.debugState().socketLocalPorts as number[]).includes(port));
    assert.ok(agent, `the destination's peer port ${port} belongs to one of our agents`);
    return agent.id;
  } finally {
    client.close();
  }
}

describe('fleet: routing, presence, tenancy, status', () => {
  const fleet = new Fleet();
  const beat = ['--heartbeat-interval', '300ms'];
  // The destinations listen on three loopback addresses; loopback needs exact allow entries.
  const agentFlags = [...beat, '--allow-destinations', `${TEST_ALLOWED_DESTINATIONS},127.0.0.2,127.1.0.1`];
  let exact: RunningAgent;
  let dests: Awaited<ReturnType<typeof destinationOn>>[];
  let routed: { uds: string };
  let defaultRouteOnly: { uds: string };

  before(async () => {
    await fleet.startNats();
    routed = await fleet.frontend([
      '--proxy-strategies',
      'destHost,defaultRoute,default',
      '--server-id',
      'fe-routed',
      ...beat,
    ]);
    defaultRouteOnly = await fleet.frontend([
      '--proxy-strategies',
      'defaultRoute',
      '--server-id',
      'fe-route',
      ...beat,
    ]);
    exact = await fleet.agent([
      '--agent-id',
      'exact',
      '--agent-identifiers',
      'ipv4=127.0.0.1',
      ...agentFlags,
    ]);
    await fleet.agent(['--agent-id', 'wide', '--agent-identifiers', 'cidr=127.0.0.0/8', ...agentFlags]);
    await fleet.agent([
      '--agent-id',
      'narrow',
      '--agent-identifiers',
      'cidr=127.0.0.0/16&cidr=10.0.0.0/8',
      ...agentFlags,
    ]);
    await fleet.agent(['--agent-id', 'gateway', '--agent-identifiers', 'default-route=true', ...agentFlags]);
    dests = await Promise.all(['127.0.0.1', '127.0.0.2', '127.1.0.1'].map(destinationOn));
    await eventually(
      () => (fleet.frontends[0]!.debugState().agents as number) === 4,
      'frontend knows 4 agents',
    );
  });
  after(async () => {
    await Promise.all(dests.map((d) => d.close()));
    await fleet.stop();
  });

  it('destHost: an exact IP beats any CIDR; the longest CIDR prefix wins', async () => {
    for (let i = 0; i < 3; i++) assert.equal(await servedBy(fleet, routed.uds, dests[0]!), 'exact');
    for (let i = 0; i < 3; i++) assert.equal(await servedBy(fleet, routed.uds, dests[1]!), 'narrow');
    for (let i = 0; i < 3; i++) assert.equal(await servedBy(fleet, routed.uds, dests[2]!), 'wide');
  });

  it('defaultRoute: goes to agents with default-route=true', async () => {
    for (let i = 0; i < 3; i++)
      assert.equal(await servedBy(fleet, defaultRouteOnly.uds, dests[0]!), 'gateway');
  });

  it('falls through to the next strategy when no agent matches', async () => {
    const fallthrough = await fleet.frontend(['--proxy-strategies', 'destHost,defaultRoute', ...beat]);
    await eventually(() => (fallthrough.debugState().agents as number) >= 4, 'knows the agents');
    const outside = await destinationOn('127.0.0.1');
    // 127.0.0.1 matches 'exact'; a name matches nobody's identifiers -> defaultRoute.
    const client = new ProxyStreamClient(`unix:${fallthrough.uds}`);
    const dial = await client.dial(`localhost:${outside.address.split(':')[1]}`);
    assert.equal(dial.error, '');
    client.send(dial.connectID, Buffer.from('x'));
    await client.waitBytes(dial.connectID, 1);
    const gateway = fleet.agents.find((a) => a.id === 'gateway')!;
    assert.ok((gateway.debugState().socketLocalPorts as number[]).includes(outside.remotePorts.at(-1)!));
    client.close();
    const destHostOnly = await fleet.frontend(['--proxy-strategies', 'destHost', ...beat]);
    const c2 = new ProxyStreamClient(`unix:${destHostOnly.uds}`);
    assert.equal(
      (await c2.dial('localhost:1')).error,
      'No agent available',
      'after the last strategy: no agent',
    );
    c2.close();
    await outside.close();
  });

  it('drops an agent that stops heartbeating within 3 intervals; dials meanwhile go elsewhere', async () => {
    const { child } = await fleet.spawnAgent([
      '--agent-id',
      'doomed',
      '--agent-identifiers',
      'ipv4=127.0.0.2',
      ...agentFlags,
    ]);
    const fe = fleet.frontends[0]!;
    await eventually(() => (fe.debugState().agents as number) === 5, 'frontend sees the new agent');
    child.kill('SIGKILL');
    const killedAt = Date.now();
    // Every dial succeeds: the dead agent's subject has no responders, so the next candidate answers.
    while ((fe.debugState().agents as number) === 5) {
      assert.equal(await servedBy(fleet, routed.uds, dests[1]!), 'narrow');
      assert.ok(Date.now() - killedAt < 3 * 300 + 300, 'dropped within 3 heartbeat intervals (+ one check)');
    }
    const gone = Date.now() - killedAt;
    assert.ok(gone <= 3 * 300 + 300, `dropped after ${gone} ms`);
  });

  it('agent draining: no new dials land on it, its open tunnel keeps working', async () => {
    const client = new ProxyStreamClient(`unix:${routed.uds}`);
    const dial = await client.dial(dests[0]!.address);
    client.send(dial.connectID, Buffer.from('one'));
    await client.waitBytes(dial.connectID, 3);
    const stopping = exact.stop();
    await eventually(() => exact.debugState().draining === true, 'draining');
    assert.equal(
      await servedBy(fleet, routed.uds, dests[0]!),
      'narrow',
      'new dials for 127.0.0.1 fall to the best CIDR agent',
    );
    client.send(dial.connectID, Buffer.from('two'));
    await client.waitBytes(dial.connectID, 6);
    assert.equal(client.dataOf(dial.connectID).toString(), 'onetwo');
    client.closeRequest(dial.connectID);
    assert.equal(await client.waitClosed(dial.connectID), '');
    await stopping; // returns once its last tunnel ended
    client.close();
    fleet.agents.splice(fleet.agents.indexOf(exact), 1);
  });

  it('isolates subject prefixes: a frontend never routes to another prefix’s agents', async () => {
    const tenantA = await fleet.frontend(['--subject-prefix', 'tenant_a']);
    const client = new ProxyStreamClient(`unix:${tenantA.uds}`);
    assert.equal((await client.dial(dests[0]!.address)).error, 'No agent available');
    const agentA = await fleet.agent(['--subject-prefix', 'tenant_a', '--agent-id', 'agent-a']);
    await eventually(() => tenantA.debugState().agentsTakingDials === 1, 'agent-a known to its frontend');
    const before = fleet.agents.filter((a) => a !== agentA).map((a) => a.debugState().tunnels);
    const dial = await client.dial(dests[0]!.address);
    assert.equal(dial.error, '');
    assert.equal(agentA.debugState().tunnels, 1);
    assert.deepEqual(
      fleet.agents.filter((a) => a !== agentA).map((a) => a.debugState().tunnels),
      before,
      'no agent of the default prefix got the tunnel',
    );
    client.close();
  });

  it('knats status shows the fleet as a table and as JSON', async () => {
    const { stdout: json } = await run(process.execPath, [
      cliPath,
      'status',
      '--nats-url',
      fleet.nats.url,
      '--json',
      '--wait',
      '500ms',
    ]);
    const status = JSON.parse(json) as {
      members: { id: string; role: string; identifiers: string }[];
      warnings: string[];
    };
    const ids = status.members.map((m) => m.id);
    for (const id of ['fe-routed', 'fe-route', 'wide', 'narrow', 'gateway'])
      assert.ok(ids.includes(id), `${id} listed`);
    assert.equal(status.members.find((m) => m.id === 'wide')?.identifiers, 'cidr=127.0.0.0%2F8');
    const { stdout: table } = await run(process.execPath, [
      cliPath,
      'status',
      '--nats-url',
      fleet.nats.url,
      '--wait',
      '500ms',
    ]);
    assert.match(table, /^ROLE\s+ID\s+VERSION\s+UPTIME\s+TUNNELS/);
    assert.match(table, /agent\s+narrow\s+\S+\s+\d+s\s+\d+/);
    assert.match(table, /frontend\s+fe-routed/);
  });
});
