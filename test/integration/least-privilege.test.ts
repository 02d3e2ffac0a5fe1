/**
 * Least privilege on the bus against real nats-server processes:
 * the configuration printed by `knats broker config`, the credentials of the
 * local `knats broker`, and every authenticated-NATS flag end to end.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { connect, type NatsConnection, nkeys } from '@nats-io/transport-node';
import { pino } from 'pino';
import { startAgent } from '../../agent/agent.js';
import { connectionOptions, type NatsSettings } from '../../broker/bus/connection.js';
import { startLocalServer } from '../../broker/nats-server/local-server.js';
import { claimsToken } from '../../broker/wire/identifiers.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { collectFleet } from '../../cli/status-command.js';
import { startFrontend } from '../../frontend/frontend.js';
import { createPki, type Pki } from '../helpers/certs.js';
import { type Destination, echoServer } from '../helpers/destinations.js';
import { agentArgs, cliPath, eventually, Fleet, fetchText, frontendArgs } from '../helpers/fleet.js';
import {
  assertPublishAllowed,
  assertPublishRefused,
  assertSubscribeAllowed,
  assertSubscribeRefused,
  brokerConfigCli,
  connectWith,
} from '../helpers/nats-permissions.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

function captureLogger() {
  const entries: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void entries.push(JSON.parse(line)) });
  return { logger, entries };
}

async function assertConnectRefused(settings: NatsSettings, message: RegExp): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    connect({
      ...connectionOptions(settings, 'refused', false),
      maxReconnectAttempts: 0,
      timeout: 2000,
    }).then(
      async (nc) => {
        await nc.close();
        return 'connected';
      },
      (err: Error) => err,
    ),
    new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), 8000);
    }),
  ]);
  clearTimeout(timer);
  assert.ok(outcome instanceof Error, `connect was not refused: ${String(outcome)}`);
  assert.match(outcome.message, message);
}

/** Starts a frontend and an agent in-process with `flags` each and carries bytes through a tunnel. */
async function tunnelThrough(
  fleet: Fleet,
  echo: Destination,
  frontendFlags: string[],
  agentFlags: string[],
): Promise<{ frontendLog: Record<string, unknown>[]; agentLog: Record<string, unknown>[] }> {
  const uds = fleet.socketPath();
  const fe = frontendConfig(frontendArgs(fleet.nats.url, uds, frontendFlags), {});
  const feLog = captureLogger();
  const frontend = await startFrontend({ ...fe.config, logger: feLog.logger });
  fleet.frontends.push(frontend);
  const ag = agentConfig(agentArgs(fleet.nats.url, agentFlags), {});
  const agLog = captureLogger();
  const agent = await startAgent({ ...ag.config, logger: agLog.logger });
  fleet.agents.push(agent);
  await eventually(
    async () => (await fetchText(frontend.healthPort, '/readyz')).status === 200,
    'frontend ready',
  );

  const client = new ProxyStreamClient(`unix:${uds}`);
  const dial = await client.dial(echo.address);
  assert.equal(dial.error, '');
  const payload = Buffer.alloc(256 * 1024, 7);
  await client.sendAll(dial.connectID, payload);
  await client.waitBytes(dial.connectID, payload.length);
  assert.ok(client.dataOf(dial.connectID).equals(payload), 'echoed byte for byte');
  client.closeRequest(dial.connectID);
  assert.equal(await client.waitClosed(dial.connectID), '');
  client.close();
  return { frontendLog: feLog.entries, agentLog: agLog.entries };
}

const natsErrors = (log: Record<string, unknown>[]) =>
  log.filter((e) => e.msg === 'NATS error' || /subscription failed/.test(String(e.msg)));

describe('least privilege: the configuration of `knats broker config` on a real nats-server', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-lp-'));
  const seed = (prefix: string, name: string) => join(dir, 'state', prefix, `${name}.nk`);
  const fleet = new Fleet();
  let echo: Destination;
  let config: string;
  const conns: NatsConnection[] = [];
  const as = async (prefix: string, name: string) => {
    const nc = await connectWith({ servers: [fleet.nats.url], nkeyFile: seed(prefix, name) });
    conns.push(nc);
    return nc;
  };

  before(async () => {
    config = brokerConfigCli(
      ['--prefix', 'tenant-a,tenant-b', '--agent', 'a1', '--agent', 'a2', '--state-dir', 'state'],
      dir,
    );
    fleet.nats = await startLocalServer({ extraConfig: config });
    echo = await echoServer();
  });
  // Each test's raw connections go with it: a leftover queue subscriber would take real dials.
  afterEach(async () => {
    await Promise.all(conns.splice(0).map((nc) => nc.close()));
  });
  after(async () => {
    await echo.close();
    await fleet.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('--require-grants: agents without a grant, per-agent or shared, may claim no identifiers; granted ones theirs', async () => {
    const grantsDir = mkdtempSync(join(tmpdir(), 'knats-grants-'));
    const server = await startLocalServer({
      extraConfig: brokerConfigCli(
        [
          '--prefix',
          'g',
          '--agent',
          'plain',
          '--agent',
          'named?host=n.example',
          '--require-grants',
          '--state-dir',
          'state',
        ],
        grantsDir,
      ),
    });
    const shared = await startLocalServer({
      extraConfig: brokerConfigCli(['--prefix', 's', '--require-grants', '--state-dir', 'state'], grantsDir),
    });
    const connections: NatsConnection[] = [];
    const user = async (url: string, prefix: string, name: string) => {
      const nc = await connectWith({
        servers: [url],
        nkeyFile: join(grantsDir, 'state', prefix, `${name}.nk`),
      });
      connections.push(nc);
      return nc;
    };
    try {
      const plain = await user(server.url, 'g', 'agent-plain');
      await assertPublishAllowed(plain, `g.presence.agent.plain.${claimsToken('')}`);
      await assertPublishRefused(plain, `g.presence.agent.plain.${claimsToken('host=n.example')}`);
      await assertPublishRefused(plain, `g.presence.agent.plain.${claimsToken('default-route=true')}`);
      const named = await user(server.url, 'g', 'agent-named');
      await assertPublishAllowed(named, `g.presence.agent.named.${claimsToken('host=n.example')}`);
      await assertPublishRefused(named, `g.presence.agent.named.${claimsToken('')}`);
      const anyAgent = await user(shared.url, 's', 'agent');
      await assertPublishAllowed(anyAgent, `s.presence.agent.someone.${claimsToken('')}`);
      await assertPublishRefused(anyAgent, `s.presence.agent.someone.${claimsToken('cidr=0.0.0.0/0')}`);
    } finally {
      await Promise.all(connections.map((nc) => nc.close()));
      await server.stop();
      await shared.stop();
      rmSync(grantsDir, { recursive: true, force: true });
    }
  });

  it('writes one seed per role and agent, readable only by the owner, and no secret into the config', () => {
    for (const prefix of ['tenant-a', 'tenant-b']) {
      for (const name of ['frontend', 'agent-a1', 'agent-a2', 'status']) {
        const file = seed(prefix, name);
        assert.equal(statSync(file).mode & 0o777, 0o600, file);
        const text = readFileSync(file, 'utf8').trim();
        assert.match(text, /^SU[A-Z2-7]{56}$/);
        const publicKey = nkeys.fromSeed(new TextEncoder().encode(text)).getPublicKey();
        assert.ok(config.includes(publicKey), `${name} of ${prefix} is in the config`);
        assert.ok(!config.includes(text), 'the seed itself is not in the config');
      }
      assert.equal(statSync(join(dir, 'state', prefix)).mode & 0o777, 0o700);
    }
    assert.doesNotMatch(
      config,
      /subscribe: \{ allow: \[[^\]]*"tenant-a\.ag\.>"/,
      'per-agent users replace the shared agent user',
    );
  });

  it('refuses connections without credentials or with an unknown key', async () => {
    await assertConnectRefused({ servers: [fleet.nats.url] }, /Authorization Violation/i);
    const stranger = join(dir, 'stranger.nk');
    writeFileSync(stranger, new TextDecoder().decode(nkeys.createUser().getSeed()));
    await assertConnectRefused({ servers: [fleet.nats.url], nkeyFile: stranger }, /Authorization Violation/i);
  });

  it("an agent cannot subscribe to another agent's frame or dial subject, nor snoop every dial", async () => {
    const a1 = await as('tenant-a', 'agent-a1');
    await assertSubscribeRefused(a1, 'tenant-a.ag.a2.*');
    await assertSubscribeRefused(a1, 'tenant-a.ag.>');
    await assertSubscribeRefused(a1, 'tenant-a.ag.*.*');
    await assertSubscribeRefused(a1, 'tenant-a.dial.agent.a2');
    // The queue groups of earlier releases: a member could take any share by subscribing many times.
    await assertSubscribeRefused(a1, 'tenant-a.dial.any', 'agents');
    await assertSubscribeRefused(a1, 'tenant-a.dial.route', 'agents');
    await assertSubscribeRefused(a1, 'tenant-a.dial.>');
    await assertSubscribeRefused(a1, 'tenant-a.fe.>');
    await assertSubscribeRefused(a1, '>');
    // ...while its own subjects are fine.
    await assertSubscribeAllowed(a1, 'tenant-a.ag.a1.*');
    await assertSubscribeAllowed(a1, 'tenant-a.dial.agent.a1');
    await assertSubscribeAllowed(a1, 'tenant-a.presence.*.*.*');
  });

  it('an agent cannot reach another prefix', async () => {
    const a1 = await as('tenant-a', 'agent-a1');
    await assertSubscribeRefused(a1, 'tenant-b.ag.a1.*');
    await assertSubscribeRefused(a1, 'tenant-b.dial.agent.a1');
    await assertSubscribeRefused(a1, 'tenant-b.presence.*.*.*');
    await assertPublishRefused(a1, 'tenant-b.fe.x.y');
    await assertPublishRefused(a1, 'tenant-b.presence.agent.a1.x');
  });

  it('an agent cannot publish a dial request nor pose as a frontend', async () => {
    const a1 = await as('tenant-a', 'agent-a1');
    const a2 = await as('tenant-a', 'agent-a2');
    let dialsSeen = 0;
    a2.subscribe('tenant-a.dial.agent.a2', {
      callback: () => {
        dialsSeen++;
      },
    });
    a2.subscribe('tenant-a.ag.a2.*', {
      callback: () => {
        dialsSeen++;
      },
    });
    await a2.flush();
    await assertPublishRefused(a1, 'tenant-a.dial.agent.a2');
    await assertPublishRefused(a1, 'tenant-a.ag.a2.sometunnel');
    await a2.flush();
    assert.equal(dialsSeen, 0, 'nothing reached the other agent');
    // What an agent must be able to publish.
    await assertPublishAllowed(a1, 'tenant-a.fe.somefrontend.sometunnel');
    await assertPublishAllowed(a1, 'tenant-a.presence.agent.a1.x');
    // ...but heartbeats only as itself.
    await assertPublishRefused(a1, 'tenant-a.presence.agent.a2.x');
    await assertPublishRefused(a1, 'tenant-a.presence.frontend.a1.x');
    await assertPublishRefused(a1, 'tenant-a.presence');
  });

  it("a frontend cannot subscribe to agents' frame subjects nor pose as an agent; status is read-only", async () => {
    const fe = await as('tenant-a', 'frontend');
    await assertSubscribeRefused(fe, 'tenant-a.ag.>');
    await assertSubscribeRefused(fe, 'tenant-a.ag.a1.*');
    await assertSubscribeRefused(fe, 'tenant-a.dial.agent.a1');
    await assertPublishRefused(fe, 'tenant-a.fe.otherfrontend.tunnel');
    await assertPublishAllowed(fe, 'tenant-a.dial.agent.a1');
    await assertPublishAllowed(fe, 'tenant-a.ag.a1.tunnel');
    const status = await as('tenant-a', 'status');
    await assertSubscribeAllowed(status, 'tenant-a.presence.*.*.*');
    await assertSubscribeRefused(status, 'tenant-a.fe.>');
    await assertSubscribeRefused(status, '_INBOX.>');
    await assertPublishRefused(status, 'tenant-a.dial.agent.a1');
    await assertPublishRefused(status, 'tenant-a.presence.agent.a1.x');
  });

  it("one prefix's account does not see another's dial replies, even on _INBOX.>", async () => {
    const feA = await as('tenant-a', 'frontend');
    const a1 = await as('tenant-a', 'agent-a1');
    const feB = await as('tenant-b', 'frontend');
    let sniffed = 0;
    feB.subscribe('_INBOX.>', {
      callback: () => {
        sniffed++;
      },
    });
    await feB.flush();
    a1.subscribe('tenant-a.dial.agent.a1', {
      callback: (_err, msg) => {
        msg.respond('answer');
      },
    });
    await a1.flush();
    const reply = await feA.request('tenant-a.dial.agent.a1', 'question', { timeout: 2000 });
    assert.equal(reply.string(), 'answer', 'allow_responses lets the agent answer');
    await feB.flush();
    assert.equal(sniffed, 0);
  });

  it('a frontend and an agent with the generated credentials carry a tunnel, with no permission error', async () => {
    const { frontendLog, agentLog } = await tunnelThrough(
      fleet,
      echo,
      ['--subject-prefix', 'tenant-a', '--nats-nkey', seed('tenant-a', 'frontend')],
      ['--subject-prefix', 'tenant-a', '--agent-id', 'a1', '--nats-nkey', seed('tenant-a', 'agent-a1')],
    );
    assert.deepEqual(natsErrors(frontendLog), [], 'frontend saw no NATS error');
    assert.deepEqual(natsErrors(agentLog), [], 'agent saw no NATS error');
    // ...and `knats status` with the status credentials sees both.
    const status = await as('tenant-a', 'status');
    const members = await collectFleet(status, 'tenant-a', 500);
    assert.deepEqual(
      members.map((m) => m.role).sort(),
      ['agent', 'frontend'],
      JSON.stringify(members.map((m) => m.id)),
    );
  });

  it("an agent started with credentials of another agent id cannot take that agent's frames", async () => {
    const a2 = await as('tenant-a', 'agent-a2');
    await assertSubscribeRefused(a2, 'tenant-a.ag.a1.*');
    await assertSubscribeRefused(a2, 'tenant-a.dial.agent.a1');
  });
});

describe('knats broker (local development server)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-broker-'));
  const children: ChildProcess[] = [];

  /** Starts `knats broker` and resolves with its stdout once it printed everything. */
  async function startBroker(args: string[]): Promise<{ child: ChildProcess; lines: string[] }> {
    const child = spawn(process.execPath, [cliPath, 'broker', '--port', '0', ...args], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let out = '';
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const lines = await new Promise<string[]>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`broker not ready:\n${out}\n${err}`)), 15_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (/--no-auth/.test(out) && out.endsWith('\n')) {
          clearTimeout(timer);
          resolve(out.trimEnd().split('\n'));
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`broker exited with ${code}:\n${out}\n${err}`));
      });
    });
    return { child, lines };
  }

  async function stop(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }

  after(async () => {
    await Promise.all(children.map(stop));
    rmSync(dir, { recursive: true, force: true });
  });

  it('starts with authentication on, prints the URL and how each role passes its seed', async () => {
    const { child, lines } = await startBroker([]);
    const url = lines[0]!;
    assert.match(url, /^nats:\/\/127\.0\.0\.1:\d+$/);
    const text = lines.join('\n');
    assert.match(text, /authentication on/);
    for (const role of ['frontend', 'agent', 'status']) {
      assert.match(
        text,
        new RegExp(`knats ${role} .*--nats-url ${url} --nats-nkey \\.knats-state/knats/${role}\\.nk`),
      );
    }
    assert.doesNotMatch(text, /SU[A-Z2-7]{56}/, 'no seed printed');
    const seedFile = (role: string) => join(dir, '.knats-state', 'knats', `${role}.nk`);
    await assertConnectRefused({ servers: [url] }, /Authorization Violation/i);
    const agent = await connectWith({ servers: [url], nkeyFile: seedFile('agent') });
    // The shared agent user of the development broker: any agent id's dials (identity is not bound).
    await assertSubscribeAllowed(agent, 'knats.dial.agent.any-id');
    await assertPublishRefused(agent, 'knats.dial.agent.any-id');
    await agent.close();
    const status = await connectWith({ servers: [url], nkeyFile: seedFile('status') });
    await assertPublishRefused(status, 'knats.dial.agent.any-id');
    await status.close();
    const firstKey = readFileSync(seedFile('agent'), 'utf8');
    await stop(child);

    // A restart reuses the credentials: agents configured with them keep working.
    const again = await startBroker([]);
    assert.match(again.lines.join('\n'), /reused/);
    assert.equal(readFileSync(seedFile('agent'), 'utf8'), firstKey);
    await stop(again.child);
  });

  it('--no-auth starts without authentication', async () => {
    const { child, lines } = await startBroker(['--no-auth']);
    assert.match(lines.join('\n'), /authentication OFF/);
    const nc = await connectWith({ servers: [lines[0]!] });
    await assertSubscribeAllowed(nc, '>');
    await nc.close();
    await stop(child);
  });
});

// ---------------------------------------------------------------------------
// Decentralized auth (operator mode) for --nats-creds: JWTs signed with nkeys,
// in the format of nats-io/jwt v2 (what `nsc` writes).

const b64url = (bytes: Uint8Array | string) => Buffer.from(bytes).toString('base64url');

function base32(bytes: Uint8Array): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

function signJwt(signer: nkeys.KeyPair, subject: string, nats: Record<string, unknown>): string {
  const header = b64url(JSON.stringify({ typ: 'JWT', alg: 'ed25519-nkey' }));
  const claims: Record<string, unknown> = {
    iat: Math.floor(Date.now() / 1000),
    iss: signer.getPublicKey(),
    name: subject.slice(0, 8),
    sub: subject,
    nats: { ...nats, version: 2 },
  };
  claims.jti = base32(createHash('sha512-256').update(JSON.stringify(claims)).digest());
  const payload = b64url(JSON.stringify(claims));
  return `${header}.${payload}.${b64url(signer.sign(new TextEncoder().encode(`${header}.${payload}`)))}`;
}

/** An operator-mode server config (memory resolver) and a .creds file of one user of its account. */
function operatorSetup(dir: string): { serverConfig: string; credsFile: string; strangerCredsFile: string } {
  const operator = nkeys.createOperator();
  const account = nkeys.createAccount();
  const unlimited = {
    subs: -1,
    data: -1,
    payload: -1,
    imports: -1,
    exports: -1,
    wildcards: true,
    conn: -1,
    leaf: -1,
  };
  const operatorJwt = signJwt(operator, operator.getPublicKey(), { type: 'operator' });
  const accountJwt = signJwt(operator, account.getPublicKey(), { type: 'account', limits: unlimited });
  const credsFor = (issuer: nkeys.KeyPair, name: string) => {
    const user = nkeys.createUser();
    const userJwt = signJwt(issuer, user.getPublicKey(), {
      type: 'user',
      pub: {},
      sub: {},
      subs: -1,
      data: -1,
      payload: -1,
    });
    const file = join(dir, `${name}.creds`);
    writeFileSync(
      file,
      `-----BEGIN NATS USER JWT-----\n${userJwt}\n------END NATS USER JWT------\n\n` +
        `-----BEGIN USER NKEY SEED-----\n${new TextDecoder().decode(user.getSeed())}\n------END USER NKEY SEED------\n`,
      { mode: 0o600 },
    );
    return file;
  };
  return {
    serverConfig: `operator: ${operatorJwt}\nresolver: MEMORY\nresolver_preload: {\n  ${account.getPublicKey()}: ${accountJwt}\n}`,
    credsFile: credsFor(account, 'user'),
    // Signed by an account the server does not know.
    strangerCredsFile: credsFor(nkeys.createAccount(), 'stranger'),
  };
}

describe('authenticated NATS flags end to end (real nats-server per mode)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-auth-'));
  let pki: Pki;
  let echo: Destination;

  before(async () => {
    pki = createPki(join(dir, 'pki'));
    echo = await echoServer();
  });
  after(async () => {
    await echo.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function withServer(extraConfig: string, body: (fleet: Fleet) => Promise<void>): Promise<void> {
    const fleet = new Fleet();
    try {
      fleet.nats = await startLocalServer({ extraConfig });
      await body(fleet);
    } finally {
      await fleet.stop();
    }
  }

  it('--nats-user / --nats-password', async () => {
    await withServer(
      'authorization { users: [ { user: "fe", password: "fe-secret" }, { user: "ag", password: "ag-secret" } ] }',
      async (fleet) => {
        await tunnelThrough(
          fleet,
          echo,
          ['--nats-user', 'fe', '--nats-password', 'fe-secret'],
          ['--nats-user', 'ag', '--nats-password', 'ag-secret'],
        );
        await assertConnectRefused(
          { servers: [fleet.nats.url], user: 'fe', password: 'wrong' },
          /Authorization Violation/i,
        );
      },
    );
  });

  it('--nats-token', async () => {
    await withServer('authorization { token: "t0ken-s3cret" }', async (fleet) => {
      await tunnelThrough(fleet, echo, ['--nats-token', 't0ken-s3cret'], ['--nats-token', 't0ken-s3cret']);
      await assertConnectRefused({ servers: [fleet.nats.url], token: 'nope' }, /Authorization Violation/i);
    });
  });

  it('--nats-nkey', async () => {
    const pair = nkeys.createUser();
    const seedFile = join(dir, 'user.nk');
    writeFileSync(seedFile, `${new TextDecoder().decode(pair.getSeed())}\n`, { mode: 0o600 });
    await withServer(`authorization { users: [ { nkey: "${pair.getPublicKey()}" } ] }`, async (fleet) => {
      await tunnelThrough(fleet, echo, ['--nats-nkey', seedFile], ['--nats-nkey', seedFile]);
      await assertConnectRefused({ servers: [fleet.nats.url] }, /Authorization Violation/i);
    });
  });

  it('--nats-creds (operator mode: JWT + nkey seed, as nsc writes them)', async () => {
    const { serverConfig, credsFile, strangerCredsFile } = operatorSetup(dir);
    await withServer(serverConfig, async (fleet) => {
      await tunnelThrough(fleet, echo, ['--nats-creds', credsFile], ['--nats-creds', credsFile]);
      await assertConnectRefused(
        { servers: [fleet.nats.url], credsFile: strangerCredsFile },
        /Authorization Violation/i,
      );
      await assertConnectRefused({ servers: [fleet.nats.url] }, /Authorization Violation/i);
    });
  });

  it('--nats-tls-ca (server TLS, verified against our CA) with a token', async () => {
    const tls = `tls { cert_file: "${pki.server.cert}", key_file: "${pki.server.key}", timeout: 2 }
authorization { token: "tls-token" }`;
    await withServer(tls, async (fleet) => {
      const flags = ['--nats-tls-ca', pki.ca.cert, '--nats-token', 'tls-token'];
      await tunnelThrough(fleet, echo, flags, flags);
      // Without our CA the server's certificate is not trusted.
      await assertConnectRefused(
        { servers: [fleet.nats.url], token: 'tls-token', tlsCaFile: pki.otherCa.cert },
        /certificate|self.signed|verify/i,
      );
    });
  });

  it('--nats-tls-cert / --nats-tls-key (mutual TLS)', async () => {
    const tls = `tls { cert_file: "${pki.server.cert}", key_file: "${pki.server.key}", ca_file: "${pki.ca.cert}", verify: true, timeout: 2 }`;
    await withServer(tls, async (fleet) => {
      const flags = [
        '--nats-tls-ca',
        pki.ca.cert,
        '--nats-tls-cert',
        pki.client.cert,
        '--nats-tls-key',
        pki.client.key,
      ];
      await tunnelThrough(fleet, echo, flags, flags);
      // No client certificate, or one from another CA: the server aborts the handshake
      // (under TLS 1.3 the client only notices that the connection never completes).
      await assertConnectRefused(
        { servers: [fleet.nats.url], tlsCaFile: pki.ca.cert },
        /timeout|certificate|closed|reset/i,
      );
      await assertConnectRefused(
        {
          servers: [fleet.nats.url],
          tlsCaFile: pki.ca.cert,
          tlsCertFile: pki.otherClient.cert,
          tlsKeyFile: pki.otherClient.key,
        },
        /timeout|certificate|closed|reset/i,
      );
    });
  });
});
