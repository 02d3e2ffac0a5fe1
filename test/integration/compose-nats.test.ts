/**
 * The NATS permissions of deploy/nats/auth.conf tried on a real nats-server
 * over TLS, with the compose file's own users, ids and command lines: what
 * each user may do, a tunnel through the compose frontend and each compose
 * agent, and the client's curl through the compose HTTP CONNECT frontend.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { type RunningAgent, startAgent } from '../../agent/agent.js';
import { silentLogger } from '../../broker/logging.js';
import { freePort, type LocalServer, startLocalServer } from '../../broker/nats-server/local-server.js';
import { Subjects } from '../../broker/wire/subjects.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { type RunningFrontend, startFrontend } from '../../frontend/frontend.js';
import { checkCompose } from '../helpers/compose-check.js';
import type { ComposeReport } from '../helpers/compose-fields.js';
import { commandMissing, getThroughSocket, natsServerMissing, runCli } from '../helpers/deploy-processes.js';
import { Repo, ROOT } from '../helpers/deploy-repo.js';
import { type Destination, httpServer } from '../helpers/destinations.js';
import { agentArgs, eventually } from '../helpers/fleet.js';

describe('deploy/nats on a real nats-server, over TLS', {
  skip: natsServerMissing() || commandMissing('openssl'),
}, () => {
  const repo = new Repo();
  const subjects = new Subjects('knats');
  const dir = mkdtempSync(join(tmpdir(), 'knats-compose-'));
  let report: ComposeReport;
  let nats: LocalServer;
  /** The local server's URL as the compose processes write it: tls://, no plaintext fallback. */
  let tlsUrl: string;
  let web: Destination;
  /** The nats-certs service's output folder, and where this test generated the same files. */
  let tlsDir = '';
  const localTls = join(dir, 'nats-tls');
  const toLocalTls = (value: string) => (tlsDir ? value.replaceAll(`${tlsDir}/`, `${localTls}/`) : value);
  const localEnv = (env: Record<string, string>) =>
    Object.fromEntries(Object.entries(env).map(([k, v]) => [k, toLocalTls(v)]));

  before(async () => {
    report = checkCompose(repo);
    // The nats-certs service, run here: same script, same server names (localhost among them).
    const certs = report.services.get('nats-certs');
    const gen = certs?.argv.findIndex((a) => /gen-certs\.sh$/.test(a)) ?? -1;
    assert.ok(certs && gen >= 0, 'the nats-certs service runs gen-certs.sh');
    tlsDir = certs.argv[gen + 1] ?? '';
    execFileSync('sh', [join(ROOT, 'deploy/gen-certs.sh'), localTls, ...certs.argv.slice(gen + 2)], {
      stdio: 'ignore',
    });
    // The servers' client TLS block of cluster.conf, with its files where this test put them.
    const clientTls = /^tls\s*\{[\s\S]*?^\}/m.exec(repo.read('deploy/nats/cluster.conf') ?? '')?.[0];
    assert.ok(clientTls, 'cluster.conf has a tls block');
    nats = await startLocalServer({
      extraConfig: `${repo.read('deploy/nats/auth.conf') ?? ''}\n${toLocalTls(clientTls)}`,
    });
    tlsUrl = nats.url.replace(/^nats:/, 'tls:');
    web = await httpServer('web');
  });
  after(async () => {
    await web?.close();
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const commandOf = (service: string, kind: 'frontend' | 'agent') => {
    const svc = report.services.get(service);
    const checked = svc?.checked.find((c) => c.kind === kind);
    assert.ok(
      checked && (checked.kind === 'frontend' || checked.kind === 'agent'),
      `${service} runs knats ${kind}`,
    );
    return checked;
  };

  type Probe = [op: 'pub' | 'sub', subject: string, queue?: string];
  const probeName = ([op, subject, queue]: Probe) =>
    `${op === 'pub' ? 'publish' : 'subscription'} ${subject}${queue ? ` queue ${queue}` : ''}`;

  /** Which of the probed operations the server refused. */
  async function refused(user: string, probes: readonly Probe[]): Promise<string[]> {
    const password = report.natsUsers.get(user);
    assert.ok(password, `user ${user} in auth.conf`);
    const nc: NatsConnection = await connect({
      servers: tlsUrl,
      user,
      pass: password,
      reconnect: false,
      tls: { caFile: join(localTls, 'ca.crt') },
    });
    const seen = new Set<string>();
    const watch = (async () => {
      for await (const status of nc.status()) {
        const err = (
          status as { error?: { name?: string; operation?: string; subject?: string; queue?: string } }
        ).error;
        if (status.type === 'error' && err?.name === 'PermissionViolationError')
          seen.add(probeName([err.operation === 'publish' ? 'pub' : 'sub', err.subject ?? '', err.queue]));
      }
    })();
    for (const [op, subject, queue] of probes) {
      if (op === 'pub') nc.publish(subject);
      else nc.subscribe(subject, { ...(queue ? { queue } : {}), callback: () => {} });
    }
    // The server answers a PING only after every operation before it, errors included.
    await nc.flush();
    await nc.close();
    await watch;
    return [...seen].sort();
  }

  it('takes TLS clients that verify it with the CA of nats-certs, and no others', async () => {
    const user = 'status';
    const pass = report.natsUsers.get(user);
    const nc = await connect({
      servers: tlsUrl,
      user,
      pass,
      reconnect: false,
      tls: { caFile: join(localTls, 'ca.crt') },
    });
    await nc.close();
    // Without the CA the server's certificate is not trusted; the connection fails.
    await assert.rejects(connect({ servers: tlsUrl, user, pass, reconnect: false }));
  });

  it('each user may do its job and nothing more', async () => {
    const frontend = commandOf('frontend-grpc', 'frontend');
    const frontendId = frontend.config.id;
    const agent = commandOf('agent-a', 'agent');
    const agentId = agent.config.id;
    const otherAgent = commandOf('agent-b', 'agent').config.id;
    const status = report.services.get('client')?.checked.find((c) => c.kind === 'status');
    assert.ok(status?.kind === 'status', 'the client runs knats status');
    const cases: { user: string; allowed: Probe[]; denied: Probe[] }[] = [
      {
        user: frontend.config.nats.user ?? '',
        allowed: [
          ['sub', subjects.frontendTunnels(frontendId)],
          ['sub', subjects.presenceAll()],
          ['sub', subjects.presenceQuery()],
          ['sub', '_INBOX.abc.*'],
          ['pub', subjects.dialAgent(agentId)],
          ['pub', subjects.agentTunnel(agentId, 't1')],
          ['pub', subjects.presence('frontend', frontendId, 'c')],
          ['pub', subjects.presenceQuery()],
        ],
        denied: [
          ['sub', subjects.dialAgent(agentId)],
          ['sub', subjects.agentTunnels(agentId)],
          ['sub', 'other.>'],
          ['pub', subjects.frontendTunnel(frontendId, 't1')],
          ['pub', 'other.subject'],
          ['pub', subjects.presence('agent', agentId, 'c')],
        ],
      },
      {
        user: agent.config.nats.user ?? '',
        allowed: [
          ['sub', subjects.dialAgent(agentId)],
          ['sub', subjects.agentTunnels(agentId)],
          ['sub', subjects.presenceAll()],
          ['sub', subjects.presenceQuery()],
          ['pub', subjects.frontendTunnel(frontendId, 't1')],
          ['pub', subjects.presence('agent', agentId, 'c')],
          ['pub', subjects.presenceQuery()],
        ],
        denied: [
          // the queue groups of earlier releases, whose share any member could take by subscribing many times
          ['sub', `${subjects.prefix}.dial.any`, 'agents'],
          ['sub', `${subjects.prefix}.dial.route`, 'agents'],
          ['sub', subjects.agentTunnels(otherAgent)],
          ['sub', subjects.dialAgent(otherAgent)],
          ['sub', subjects.frontendTunnels(frontendId)],
          ['sub', '_INBOX.>'],
          ['pub', subjects.dialAgent(otherAgent)],
          ['pub', subjects.agentTunnel(otherAgent, 't1')],
          ['pub', subjects.presence('agent', otherAgent, 'c')],
          ['pub', subjects.presence('frontend', frontendId, 'c')],
        ],
      },
      {
        user: status.nats.user ?? '',
        allowed: [
          ['sub', subjects.presenceAll()],
          ['pub', subjects.presenceQuery()],
        ],
        denied: [
          ['sub', subjects.frontendTunnels(frontendId)],
          ['pub', subjects.presence('agent', agentId, 'c')],
          ['pub', subjects.dialAgent(agentId)],
        ],
      },
    ];
    for (const { user, allowed, denied } of cases) {
      assert.deepEqual(
        await refused(user, [...allowed, ...denied]),
        denied.map(probeName).sort(),
        `user ${user}: refused exactly what it must not do`,
      );
    }
  });

  it('carries a tunnel through the compose frontend and each compose agent', async () => {
    const local = (argv: readonly string[], extra: string[]) => [...argv.slice(1), ...extra];
    const fe = commandOf('frontend-grpc', 'frontend');
    const uds = join(dir, 'fe.sock');
    const { config: feConfig } = frontendConfig(
      local(fe.inv.argv.map(toLocalTls), [
        '--nats-url',
        tlsUrl,
        '--uds-name',
        uds,
        '--health-port',
        '0',
        '--admin-port',
        '0',
      ]),
      localEnv(fe.inv.env),
    );
    const frontend: RunningFrontend = await startFrontend({ ...feConfig, logger: silentLogger() });
    try {
      for (const service of ['agent-a', 'agent-b']) {
        const ag = commandOf(service, 'agent');
        // The test's web server listens on loopback: agentArgs adds the exact allow entry.
        const { config } = agentConfig(
          local(ag.inv.argv.map(toLocalTls), agentArgs(tlsUrl)),
          localEnv(ag.inv.env),
        );
        const agent: RunningAgent = await startAgent({ ...config, logger: silentLogger() });
        try {
          await eventually(
            () => frontend.debugState().agentsTakingDials === 1,
            `${service} known to the frontend`,
          );
          await getThroughSocket(uds, web, service);
          // And the client's own `knats dial` line, the real CLI, a request on its stdin.
          const dialCmd = report.services.get('client')?.checked.find((c) => c.kind === 'dial');
          assert.ok(dialCmd?.kind === 'dial', 'the client runs knats dial');
          const args = [...dialCmd.inv.argv];
          args[args.indexOf(dialCmd.flags.string('uds-name') ?? '')] = uds;
          args[args.lastIndexOf(dialCmd.address)] = web.address;
          const out = await runCli(args, `GET /via-grpc HTTP/1.0\r\nHost: web\r\n\r\n`, dialCmd.inv.env);
          assert.equal(out.code, 0, out.stderr);
          assert.match(out.stdout, /^HTTP\/1\.1 200 [\s\S]*web \/via-grpc$/);
        } finally {
          await agent.stop({ immediate: true });
        }
        await eventually(() => frontend.debugState().agents === 0, `${service} gone`);
      }
    } finally {
      await frontend.stop({ immediate: true });
    }
  });
  it("runs the client's curl through the compose HTTP CONNECT frontend, with certificates from gen-certs.sh", {
    skip: commandMissing('curl', 'openssl'),
  }, async () => {
    // The certs service, run here: same script, same server names.
    const certs = report.services.get('certs');
    const gen = certs?.argv.findIndex((a) => /gen-certs\.sh$/.test(a)) ?? -1;
    assert.ok(certs && gen >= 0, 'the certs service runs gen-certs.sh');
    const outDir = certs.argv[gen + 1] ?? '';
    const local = join(dir, 'certs');
    execFileSync('sh', [join(ROOT, 'deploy/gen-certs.sh'), local, ...certs.argv.slice(gen + 2)], {
      stdio: 'ignore',
    });
    const toLocal = (arg: string) =>
      arg.startsWith(`${outDir}/`) ? join(local, arg.slice(outDir.length + 1)) : arg;

    const fe = commandOf('frontend-connect', 'frontend');
    const port = await freePort();
    const { config: feConfig } = frontendConfig(
      [
        ...fe.inv.argv.slice(1).map(toLocal).map(toLocalTls),
        ...['--nats-url', tlsUrl, '--server-port', String(port), '--server-bind-address', '127.0.0.1'],
        ...['--health-port', '0', '--admin-port', '0'],
      ],
      localEnv(fe.inv.env),
    );
    const ag = commandOf('agent-a', 'agent');
    const { config: agConfig } = agentConfig(
      [...ag.inv.argv.slice(1).map(toLocalTls), ...agentArgs(tlsUrl)],
      localEnv(ag.inv.env),
    );
    const frontend = await startFrontend({ ...feConfig, logger: silentLogger() });
    const agent = await startAgent({ ...agConfig, logger: silentLogger() });
    try {
      await eventually(() => frontend.debugState().agents === 1, 'agent known to the frontend');
      // The client's own curl line; only addresses change: the proxy's port, and the destination.
      const curl = report.services.get('client')?.curls.find((c) => c.includes('--proxy'));
      assert.ok(curl, 'the client runs curl --proxy');
      const proxy = new URL(curl[curl.indexOf('--proxy') + 1] ?? '');
      const args = curl.map((arg) => {
        if (arg === proxy.href.replace(/\/$/, '') || arg === proxy.href)
          return `https://${proxy.hostname}:${port}`;
        if (/^http:\/\//.test(arg)) return `http://${web.address}/via-connect`;
        return toLocal(arg);
      });
      args.push('--resolve', `${proxy.hostname}:${port}:127.0.0.1`);
      const body = await new Promise<string>((resolve, reject) =>
        execFile('curl', args, { timeout: 15_000 }, (err, stdout, stderr) =>
          err ? reject(new Error(`curl ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout),
        ),
      );
      assert.equal(body, 'web /via-connect');
    } finally {
      await agent.stop({ immediate: true });
      await frontend.stop({ immediate: true });
    }
  });
});
