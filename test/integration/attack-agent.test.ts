/**
 * The attacker suite (issue 12): a malicious agent holding only its own
 * per-agent credentials (and, for the inbox attack, a second frontend's),
 * against a real nats-server running the configuration `knats broker config`
 * prints, a real frontend process and a real agent process. Every attack must
 * fail while a victim tunnel beside it stays byte-exact and both processes
 * stay up.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { presenceLimits } from '../../broker/bus/presence.js';
import { startLocalServer } from '../../broker/nats-server/local-server.js';
import {
  dialRequestCodec,
  dialResponseCodec,
  PROTOCOL_VERSION,
  presenceCodec,
} from '../../broker/wire/bus-messages.js';
import { encodeAccepted, encodeBlocked, encodeData, encodePing } from '../../broker/wire/codec.js';
import { claimsToken } from '../../broker/wire/identifiers.js';
import { Subjects } from '../../broker/wire/subjects.js';
import type { RunningFrontend } from '../../frontend/frontend.js';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { cliPath, eventually, Fleet, fetchText, metric } from '../helpers/fleet.js';
import { fakeHeartbeat } from '../helpers/heartbeats.js';
import {
  assertSubscribeAllowed,
  assertSubscribeRefused,
  brokerConfigCli,
  connectWith,
  type ProbedConnection,
  publishRefusal,
} from '../helpers/nats-permissions.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const subjects = new Subjects('knats');
/** The subject every heartbeat used before identity came from credentials. */
const LEGACY_PRESENCE = 'knats.presence';

const heartbeat = fakeHeartbeat;

/** A tunnel through the frontend and agB to an echo server that must stay byte-exact. */
class VictimTunnel {
  private sent: Buffer[] = [];
  private total = 0;
  private constructor(
    readonly client: ProxyStreamClient,
    readonly connectID: number,
  ) {}

  static async open(uds: string, address: string): Promise<VictimTunnel> {
    const client = new ProxyStreamClient(`unix:${uds}`);
    const dial = await client.dial(address);
    assert.equal(dial.error, '', 'the victim dial succeeds');
    return new VictimTunnel(client, dial.connectID);
  }

  /** Sends fresh random bytes and checks that everything sent so far came back, in order. */
  async roundTrip(what: string): Promise<void> {
    assert.equal(this.client.closeError(this.connectID), undefined, `victim tunnel closed by: ${what}`);
    const chunk = randomBytes(48 * 1024);
    this.sent.push(chunk);
    this.total += chunk.length;
    await this.client.sendAll(this.connectID, chunk);
    await this.client.waitBytes(this.connectID, this.total, 10_000).catch((err: Error) => {
      throw new Error(`victim tunnel broken by: ${what}: ${err.message}`);
    });
    assert.ok(
      this.client.dataOf(this.connectID).equals(Buffer.concat(this.sent)),
      `byte-exact after: ${what}`,
    );
  }

  async close(): Promise<void> {
    this.client.closeRequest(this.connectID);
    assert.equal(await this.client.waitClosed(this.connectID), '');
    this.client.close();
  }
}

function rssKiB(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m);
  return Number(line?.[1] ?? 0);
}

describe('attacker suite: a malicious agent with its own credentials against real processes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-attack-'));
  const seed = (name: string) => join(dir, 'state', 'knats', `${name}.nk`);
  const fleet = new Fleet();
  const uds = fleet.socketPath();
  let echo: Destination;
  let frontend: { child: ChildProcess; healthPort: number };
  let agent: { child: ChildProcess; healthPort: number };
  let attacker: ProbedConnection;
  let victim: VictimTunnel;

  const processesUp = async (what: string) => {
    assert.equal(frontend.child.exitCode, null, `frontend exited after: ${what}`);
    assert.equal(agent.child.exitCode, null, `agent exited after: ${what}`);
    assert.equal(
      (await fetchText(frontend.healthPort, '/readyz')).status,
      200,
      `frontend not ready after: ${what}`,
    );
  };

  /** The attack must fail: the victim stays byte-exact, both processes up and ready. */
  const survived = async (what: string) => {
    await attacker.flush();
    await new Promise((r) => setTimeout(r, 300));
    await processesUp(what);
    await victim.roundTrip(what);
  };

  /** A new dial through the frontend to the echo server carries bytes. */
  const freshDial = async (what: string): Promise<number> => {
    const client = new ProxyStreamClient(`unix:${uds}`);
    try {
      const dial = await client.dial(echo.address);
      assert.equal(dial.error, '', `a new dial fails after: ${what}`);
      const payload = randomBytes(1024);
      await client.sendAll(dial.connectID, payload);
      await client.waitBytes(dial.connectID, payload.length, 10_000);
      assert.ok(client.dataOf(dial.connectID).equals(payload));
      return dial.ms;
    } finally {
      client.close();
    }
  };

  before(async () => {
    const config = brokerConfigCli(
      [
        '--agent',
        'agA?host=a.example',
        '--agent',
        'agB?host=b.example',
        '--frontend',
        'fe1',
        '--frontend',
        'fe2',
        '--state-dir',
        'state',
      ],
      dir,
    );
    fleet.nats = await startLocalServer({ extraConfig: config });
    echo = await echoServer();
    frontend = await fleet.spawnFrontend(uds, [
      '--server-id',
      'fe1',
      '--nats-nkey',
      seed('frontend-fe1'),
      '--proxy-strategies',
      'destHost,default',
    ]);
    agent = await fleet.spawnAgent([
      '--agent-id',
      'agB',
      '--nats-nkey',
      seed('agent-agB'),
      '--agent-identifiers',
      'host=b.example',
    ]);
    await eventually(
      async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200,
      'frontend ready with agB known',
    );
    attacker = await connectWith({ servers: [fleet.nats.url], nkeyFile: seed('agent-agA') }, 'attacker');
    victim = await VictimTunnel.open(uds, echo.address);
    await victim.roundTrip('nothing yet');
  });

  after(async () => {
    await attacker?.close();
    await echo?.close();
    await fleet.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("cannot read another frontend's dial replies: each frontend has its own inbox", async () => {
    const fe2 = await connectWith({ servers: [fleet.nats.url], nkeyFile: seed('frontend-fe2') });
    try {
      await assertSubscribeRefused(fe2, '_INBOX.>');
      await assertSubscribeRefused(fe2, '_INBOX.fe.fe1.>');
      await assertSubscribeAllowed(fe2, '_INBOX.fe.fe2.>');
      await assertSubscribeRefused(attacker, '_INBOX.>');
    } finally {
      await fe2.close();
    }
    await survived('inbox snooping');
  });

  it('forged goodbyes, draining and openTunnels for agB or fe1 change nothing', async () => {
    const forgeries: [string, Uint8Array][] = [
      ['agent goodbye for agB', heartbeat({ id: 'agB', alive: false, identifiers: 'host=b.example' })],
      ['draining agB', heartbeat({ id: 'agB', draining: true, identifiers: 'host=b.example' })],
      ['agB with openTunnels 0', heartbeat({ id: 'agB', openTunnels: 0, identifiers: 'host=b.example' })],
      ['frontend goodbye for fe1', heartbeat({ id: 'fe1', role: 'frontend', alive: false })],
    ];
    for (const [what, body] of forgeries) {
      const info = presenceCodec.decode(body);
      const claims = claimsToken(info.identifiers);
      // On the shared legacy subject, on the victim's own subject, and on the attacker's own subject.
      assert.ok(
        await publishRefusal(attacker, LEGACY_PRESENCE, body),
        `${what} on ${LEGACY_PRESENCE} refused`,
      );
      const victimSubject = subjects.presence(info.role, info.id, claims);
      assert.ok(await publishRefusal(attacker, victimSubject, body), `${what} on ${victimSubject} refused`);
      attacker.publish(subjects.presence('agent', 'agA', claimsToken('host=a.example')), body);
      await survived(what);
    }
  });

  it('bad and huge ids in heartbeats are dropped, unclaimed dials still work', async () => {
    const ownSubject = subjects.presence('agent', 'agA', claimsToken('cidr=0.0.0.0/0'));
    for (const id of ['x y', 'a b', 'a.b', '>', 'x'.repeat(900 * 1024)]) {
      const body = heartbeat({ id, identifiers: 'cidr=0.0.0.0/0' });
      await publishRefusal(attacker, LEGACY_PRESENCE, body);
      attacker.publish(ownSubject, body);
      attacker.publish(subjects.presence('agent', 'agA', claimsToken('host=a.example')), body);
    }
    await survived('bad ids in heartbeats');
    await freshDial('bad ids in heartbeats');
  });

  it('thousands of fake agents, 900 KB ids and interval 0xffffffff neither slow a dial nor fill memory', async () => {
    const rssBefore = rssKiB(frontend.child.pid!);
    const claimAll = claimsToken('cidr=0.0.0.0/0');
    for (let i = 0; i < 5000; i++) {
      const body = heartbeat({
        id: `fake${i}`,
        identifiers: 'cidr=0.0.0.0/0',
        heartbeatIntervalMs: 0xffffffff,
      });
      attacker.publish(LEGACY_PRESENCE, body);
      attacker.publish(subjects.presence('agent', 'agA', claimAll), body);
      if (i % 500 === 0) await attacker.flush();
    }
    for (let i = 0; i < 40; i++) {
      const body = heartbeat({ id: `big${i}${'x'.repeat(900 * 1024)}`, version: 'v'.repeat(1000) });
      attacker.publish(LEGACY_PRESENCE, body);
      attacker.publish(subjects.presence('agent', 'agA', claimsToken('')), body);
      await attacker.flush();
    }
    // Its own id with an absurd interval: at most clamped, never ~149 days.
    attacker.publish(
      subjects.presence('agent', 'agA', claimsToken('host=a.example')),
      heartbeat({ id: 'agA', identifiers: 'host=a.example', heartbeatIntervalMs: 0xffffffff }),
    );
    await survived('5,000 fake agents and 900 KB ids');
    const ms = await freshDial('5,000 fake agents');
    assert.ok(ms < 1000, `a dial took ${ms} ms among fake agents`);
    const grownMiB = (rssKiB(frontend.child.pid!) - rssBefore) / 1024;
    assert.ok(grownMiB < 40, `frontend RSS grew ${grownMiB.toFixed(0)} MiB`);
  });

  it('cannot claim identifiers it was not granted, so it attracts no dial for another host', async () => {
    // Out of the table first (a goodbye under its own subject): only a heartbeat the frontends accept
    // could bring it back, and the stolen claims below must not.
    const granted = subjects.presence('agent', 'agA', claimsToken('host=a.example'));
    attacker.publish(granted, heartbeat({ id: 'agA', identifiers: 'host=a.example', alive: false }));
    let dialsAttracted = 0;
    const sub = attacker.subscribe(subjects.dialAgent('agA'), {
      callback: () => {
        dialsAttracted++;
      },
    });
    await attacker.flush();
    const stolen = 'ipv4=127.0.0.1';
    const body = heartbeat({ id: 'agA', identifiers: stolen });
    await publishRefusal(attacker, LEGACY_PRESENCE, body);
    assert.ok(
      await publishRefusal(attacker, subjects.presence('agent', 'agA', claimsToken(stolen)), body),
      'heartbeat under the hash of ungranted identifiers refused by the server',
    );
    // Under its granted subject, the claims do not hash to the subject's token: dropped.
    attacker.publish(granted, body);
    await attacker.flush();
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 3; i++) await freshDial('a stolen identifier claim');
    sub.unsubscribe();
    assert.equal(dialsAttracted, 0, 'dials for 127.0.0.1 reached the attacker');
    await survived('stolen identifiers');
  });

  it('bad dial answers (agB\'s id, agentId "a b" or 900 KB, another tunnel id) are refused, counted, and the dial moves on to agB', async () => {
    const answered: string[] = [];
    const replies: ((request: { tunnelId: string }) => Uint8Array)[] = [
      (r) => reply(r.tunnelId, 'agB'),
      (r) => reply(r.tunnelId, 'a b'),
      (r) => reply(r.tunnelId, 'x'.repeat(900 * 1024)),
      () => reply('someothertunnel', 'agA'),
    ];
    function reply(tunnelId: string, agentId: string): Uint8Array {
      return dialResponseCodec.encode({
        protocolVersion: PROTOCOL_VERSION,
        tunnelId,
        agentId,
        errorCode: '',
        errorMessage: '',
        initialWindow: 1 << 20,
      });
    }
    const sub = attacker.subscribe(subjects.dialAgent('agA'), {
      callback: (_err, msg) => {
        const request = dialRequestCodec.decode(msg.data);
        const make = replies[answered.length % replies.length]!;
        answered.push(request.tunnelId);
        msg.respond(make(request));
        // Then frames on the frontend's end of that tunnel: BLOCKED makes a frontend answer with a WINDOW.
        const frontendEnd = subjects.frontendTunnel(request.frontendId, request.tunnelId);
        attacker.publish(frontendEnd, encodeBlocked(0));
        attacker.publish(frontendEnd, encodeData(1, Buffer.from('injected')));
      },
    });
    // A proper heartbeat with its granted identifiers: destHost dials for a.example go to agA first.
    attacker.publish(
      subjects.presence('agent', 'agA', claimsToken('host=a.example')),
      heartbeat({ id: 'agA', identifiers: 'host=a.example' }),
    );
    await attacker.flush();
    await new Promise((r) => setTimeout(r, 300));
    const refusedBefore = await metric(frontend.healthPort, 'knats_dial_answers_refused_total');
    for (let i = 0; i < replies.length; i++) {
      const client = new ProxyStreamClient(`unix:${uds}`);
      // a.example resolves nowhere: agB, which the dial moves on to, answers with its own DNS failure.
      const dial = await client.dial('a.example:443');
      client.close();
      assert.notEqual(dial.error, '', 'no tunnel from a refused answer');
      assert.doesNotMatch(
        dial.error,
        /KNATS_BAD_PEER_MESSAGE/,
        `the dial moved on instead of failing: ${dial.error}`,
      );
    }
    sub.unsubscribe();
    await attacker.flush();
    assert.equal(answered.length, replies.length, 'every destHost dial for a.example was offered to agA');
    const refused = (await metric(frontend.healthPort, 'knats_dial_answers_refused_total')) - refusedBefore;
    assert.equal(refused, replies.length, 'each refusal counted');
    await survived('bad dial answers');
    await freshDial('bad dial answers');
  });

  for (const mode of [
    'drops them',
    'acknowledges them and answers nothing',
    'answers them as agB',
  ] as const) {
    it(`an agent with 200 subscriptions gets one dial, not the lot, when it ${mode}`, async () => {
      // The queue groups of earlier releases, where nats-server spread dials per subscription: gone.
      await assertSubscribeRefused(attacker, `${subjects.prefix}.dial.any`, 'agents');
      await assertSubscribeRefused(attacker, `${subjects.prefix}.dial.route`, 'agents');
      // A frontend of its own per mode: what it learns about agA (FleetRoutes.shun) starts fresh.
      const feUds = fleet.socketPath();
      const fe2 = await fleet.spawnFrontend(feUds, [
        '--server-id',
        'fe2',
        '--nats-nkey',
        seed('frontend-fe2'),
        '--proxy-strategies',
        'default',
        '--backend-dial-timeout',
        '2s',
      ]);
      const received = new Set<string>();
      const subs = Array.from({ length: 200 }, () =>
        attacker.subscribe(subjects.dialAgent('agA'), {
          callback: (_err, msg) => {
            const request = dialRequestCodec.decode(msg.data);
            if (received.has(request.tunnelId)) return; // every subscription gets a copy: act once
            received.add(request.tunnelId);
            if (mode === 'acknowledges them and answers nothing') {
              attacker.publish(
                subjects.frontendTunnel(request.frontendId, request.tunnelId),
                encodeAccepted(),
              );
            } else if (mode === 'answers them as agB') {
              msg.respond(
                dialResponseCodec.encode({
                  protocolVersion: PROTOCOL_VERSION,
                  tunnelId: request.tunnelId,
                  agentId: 'agB',
                  errorCode: '',
                  errorMessage: '',
                  initialWindow: 1 << 20,
                }),
              );
            }
          },
        }),
      );
      // Idle and willing, as far as its heartbeat says.
      attacker.publish(
        subjects.presence('agent', 'agA', claimsToken('host=a.example')),
        heartbeat({ id: 'agA', identifiers: 'host=a.example', openTunnels: 0 }),
      );
      await attacker.flush();
      try {
        await eventually(
          async () => (await fetchText(fe2.healthPort, '/readyz')).status === 200,
          'fe2 ready',
        );
        await new Promise((r) => setTimeout(r, 300));
        const failures: string[] = [];
        const dials = 12;
        for (let i = 0; i < dials; i++) {
          const client = new ProxyStreamClient(`unix:${feUds}`);
          try {
            const dial = await client.dial(echo.address);
            if (dial.error) failures.push(dial.error);
            else {
              const payload = randomBytes(1024);
              await client.sendAll(dial.connectID, payload);
              await client.waitBytes(dial.connectID, payload.length, 10_000);
              assert.ok(client.dataOf(dial.connectID).equals(payload), 'a tunnel that opened is byte-exact');
            }
          } finally {
            client.close();
          }
        }
        // Half of the first dials are its share; after the first one it let down, it is offered dials last.
        assert.ok(
          received.size >= 1 && received.size <= 2,
          `agA received ${received.size} of ${dials} dials`,
        );
        if (mode === 'acknowledges them and answers nothing') {
          assert.equal(failures.length, received.size, `only the dials agA held failed: ${failures}`);
          for (const error of failures) assert.match(error, /KNATS_DIAL_TIMEOUT/);
        } else {
          assert.deepEqual(failures, [], 'every dial moved on to agB');
        }
      } finally {
        for (const sub of subs) sub.unsubscribe();
        fe2.child.kill('SIGKILL');
      }
      await survived(`an agent that ${mode}`);
    });
  }

  it("a heartbeat flood on the attacker's own subject costs only its own heartbeats", async () => {
    // 4 KiB of identifiers that do not match the granted claims: each one is costly to read (decode, hash)
    // unless the receiver drops it by its sender's rate first.
    const beat = heartbeat({ id: 'agA', identifiers: `host=${'x'.repeat(4000)}.example` });
    const subject = subjects.presence('agent', 'agA', claimsToken('host=a.example'));
    // Longer than the three missed heartbeats after which a starved receiver would drop a live agent.
    const until = Date.now() + 8000;
    while (Date.now() < until) {
      for (let i = 0; i < 2000; i++) attacker.publish(subject, beat);
      await attacker.flush();
    }
    await survived('a heartbeat flood');
    await freshDial('a heartbeat flood');
  });

  it('a probe reply aimed at another tunnel is not answered', async () => {
    const answered: string[] = [];
    // Aimed at another tunnel of the attacker's own, so the test can see whether it was answered.
    const aimedAt = subjects.agentTunnel('agA', 'another-tunnel');
    const sub = attacker.subscribe(subjects.agentTunnels('agA'), {
      callback: (_e, m) => {
        answered.push(m.subject);
      },
    });
    attacker.publish(subjects.frontendTunnel('fe1', 'no-such-tunnel'), encodePing(0), { reply: aimedAt });
    attacker.publish(subjects.frontendTunnel('fe1', 'no-such-tunnel'), encodePing(0), {
      reply: subjects.agentTunnel('agA', 'no-such-tunnel'),
    });
    await attacker.flush();
    await eventually(() => answered.length > 0, 'the probe on the same tunnel answered');
    sub.unsubscribe();
    assert.deepEqual(answered, [subjects.agentTunnel('agA', 'no-such-tunnel')]);
    await survived('a reflected probe');
  });

  it('injected frames for unknown tunnels and a flood of presence queries are harmless', async () => {
    for (let i = 0; i < 500; i++) {
      const tunnel = randomBytes(16).toString('base64url');
      attacker.publish(subjects.frontendTunnel('fe1', tunnel), encodeData(1, randomBytes(100)), {
        reply: subjects.agentTunnel('agB', tunnel),
      });
      attacker.publish(subjects.frontendTunnel('fe1', tunnel), randomBytes(64));
      attacker.publish(subjects.presenceQuery());
    }
    await survived('injected frames and presence queries');
  });

  it('`knats status` prints peer strings without terminal escapes', async () => {
    const controls = ['\u001b', '\u0007', '\u009b'];
    const version = `${controls[0]}]0;pwned${controls[1]}${controls[0]}[2J${controls[2]}31m`;
    const body = heartbeat({ id: 'agA', identifiers: 'host=a.example', version });
    await publishRefusal(attacker, LEGACY_PRESENCE, body);
    const beat = setInterval(
      () => attacker.publish(subjects.presence('agent', 'agA', claimsToken('host=a.example')), body),
      100,
    );
    try {
      // Asynchronously: the attacker keeps beating while status listens.
      const { stdout: out } = await promisify(execFile)(
        process.execPath,
        [cliPath, 'status', '--nats-url', fleet.nats.url, '--nats-nkey', seed('status'), '--wait', '1s'],
        { encoding: 'utf8' },
      );
      assert.match(out, /agA/, 'the attacker is listed');
      for (const c of controls) assert.ok(!out.includes(c), `control character ${c.codePointAt(0)} printed`);
    } finally {
      clearInterval(beat);
    }
    await survived('terminal escapes');
  });

  it('a real agent process running with identifiers beyond its grant is refused its heartbeats and says so', async () => {
    // The start-up permission check finds the refused heartbeat subject before the agent ever says ready.
    const rogue = await fleet.spawnAgent(
      ['--agent-id', 'agA', '--nats-nkey', seed('agent-agA'), '--agent-identifiers', 'ipv4=127.0.0.1'],
      /^NATS refuses what this process needs/,
    );
    try {
      const readyz = await eventually(async () => {
        const res = await fetchText(rogue.healthPort, '/readyz');
        return res.status === 503 && res;
      }, 'the rogue agent not ready');
      assert.match(readyz.body, /NATS permission denied: publish \S*presence\.agent\.agA\./);
      assert.ok(rogue.logs.some((e) => e.code === 'KNATS_BUS_PERMISSION'));
      await survived('an agent claiming identifiers beyond its grant');
    } finally {
      rogue.child.kill('SIGKILL');
    }
  });

  it("a frontend process posing under another frontend's id is refused its heartbeats and says so", async () => {
    const impostor = await fleet.spawnFrontend(
      fleet.socketPath(),
      ['--server-id', 'fe1', '--nats-nkey', seed('frontend-fe2')],
      /^NATS refuses what this process needs/,
    );
    try {
      const readyz = await eventually(async () => {
        const res = await fetchText(impostor.healthPort, '/readyz');
        return /NATS permission denied: .*presence\.frontend\.fe1\./.test(res.body) && res;
      }, 'the impostor says why it is not ready');
      assert.equal(readyz.status, 503);
      await survived('a frontend posing as fe1');
    } finally {
      impostor.child.kill('SIGKILL');
    }
  });

  it('after every attack: the victim tunnel closes cleanly and byte-exact, both processes up', async () => {
    await victim.roundTrip('the whole suite');
    await victim.close();
    await processesUp('the whole suite');
  });
});

describe('attacker suite: where identity cannot be bound (shared credentials, no auth), presence stays bounded', () => {
  const fleet = new Fleet();
  let echo: Destination;
  let attacker: NatsConnection;
  let frontend: RunningFrontend & { uds: string };

  before(async () => {
    await fleet.startNats();
    echo = await echoServer();
    frontend = await fleet.frontend(['--server-id', 'fe1', '--proxy-strategies', 'destHost,default']);
    await fleet.agent(['--agent-id', 'victim']);
    attacker = await connect({ servers: fleet.nats.url });
    await eventually(() => frontend.debugState().agents === 1, 'the victim agent known');
  });
  after(async () => {
    await attacker.close();
    await echo.close();
    await fleet.stop();
  });

  it('caps the peer table and the incompatible set; a dial among thousands of catch-all fakes tries a few', async () => {
    const victim = await VictimTunnel.open(frontend.uds, echo.address);
    const claimAll = claimsToken('cidr=0.0.0.0/0');
    for (let i = 0; i < 5000; i++) {
      const id = `fake${i}`;
      attacker.publish(
        subjects.presence('agent', id, claimAll),
        heartbeat({ id, identifiers: 'cidr=0.0.0.0/0', heartbeatIntervalMs: 0xffffffff }),
      );
      if (i % 500 === 0) await attacker.flush();
    }
    for (let i = 0; i < 400; i++) {
      const id = `old${i}`;
      attacker.publish(
        subjects.presence('agent', id, claimsToken('')),
        heartbeat({ id, protocolVersion: 0 }),
      );
    }
    await attacker.flush();
    await eventually(() => frontend.debugState().agents === presenceLimits.maxPeers, 'the peer table full');
    await new Promise((r) => setTimeout(r, 300));
    const state = frontend.debugState();
    assert.equal(state.agents, presenceLimits.maxPeers);
    assert.equal(state.incompatiblePeers, presenceLimits.maxIncompatible);
    // destHost picks fakes first (none listens): at most MAX_AGENTS_PER_STRATEGY of them, then default: a
    // random pick (most likely a fake too), then the agent that answered this frontend's last dial.
    const client = new ProxyStreamClient(`unix:${frontend.uds}`);
    const dial = await client.dial(echo.address);
    client.close();
    assert.equal(dial.error, '');
    assert.ok(dial.ms < 1000, `dial took ${dial.ms} ms`);
    await victim.roundTrip('4,096 fake agents');
    await victim.close();
  });
});
