/**
 * The control-plane NATS of deploy/kubernetes on a real nats-server: its configuration as a
 * whole, then its TLS and the accounts of `knats broker config` with the manifests' own
 * sidecar and agent command lines.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startAgent } from '../../agent/agent.js';
import { silentLogger } from '../../broker/logging.js';
import { findNatsServer, startLocalServer } from '../../broker/nats-server/local-server.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { startFrontend } from '../../frontend/frontend.js';
import { commandMissing, getThroughSocket, natsServerMissing, runCli } from '../helpers/deploy-processes.js';
import { Repo, ROOT } from '../helpers/deploy-repo.js';
import { httpServer } from '../helpers/destinations.js';
import { agentArgs, eventually } from '../helpers/fleet.js';
import { checkKubernetes, type KubernetesReport } from '../helpers/kubernetes-check.js';
import { readNatsConf } from '../helpers/nats-conf.js';

describe('deploy/kubernetes/control-plane/nats.conf on a real nats-server', {
  skip: natsServerMissing() || commandMissing('openssl'),
}, () => {
  const repo = new Repo();
  const dir = mkdtempSync(join(tmpdir(), 'knats-k8s-'));
  let report: KubernetesReport;
  let template = '';
  /** The control-plane host's folder of nats.conf (/etc/kubernetes/knats): here, `dir`. */
  let hostDir = '';
  const creds = join(dir, 'creds', 'knats');
  /** A path of the manifests, where this test put the file docs/deployment.md copies there. */
  const local = (arg: string, seed: string) =>
    arg
      .replaceAll(`${hostDir}/`, `${dir}/`)
      .replace(/=\/etc\/knats-tls\/ca\.crt$/, `=${dir}/nats-tls/ca.crt`)
      .replace(/=\/etc\/(knats|kubernetes\/pki\/knats)\/[\w-]+\.nk$/, `=${join(creds, seed)}`);
  const agents = () =>
    report.pods.flatMap((p) => p.containers.flatMap((c) => (c.checked?.kind === 'agent' ? [c.checked] : [])));

  before(async () => {
    report = checkKubernetes(repo);
    const [server] = report.nats;
    assert.ok(server, 'a control-plane NATS');
    template = repo.read(server.template) ?? '';
    hostDir = posix.dirname(server.configPath);
    // Next to nats.conf on the host: the accounts, for the manifests' agent ids, and the certificate.
    const ids = agents().map((a) => a.config.id);
    const accounts = await runCli(
      ['broker', 'config', '--prefix', 'knats', ...ids.flatMap((id) => ['--agent', id])].concat([
        '--state-dir',
        join(dir, 'creds'),
      ]),
      '',
      {},
    );
    assert.equal(accounts.code, 0, accounts.stderr);
    writeFileSync(join(dir, 'knats-accounts.conf'), accounts.stdout);
    execFileSync(
      'sh',
      [join(ROOT, 'deploy/gen-certs.sh'), join(dir, 'nats-tls'), 'nats.knats.example.internal'].concat([
        'localhost',
        '127.0.0.1',
        'cp-1',
        'cp-2',
        'cp-3',
      ]),
      { stdio: 'ignore' },
    );
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('nats-server -t accepts it with its placeholders filled', () => {
    const placeholders = [...new Set(template.match(/<[A-Z0-9_]+>/g))];
    assert.ok(placeholders.length > 0, 'the template has placeholders');
    const filled = template.replaceAll(`${hostDir}/`, `${dir}/`).replace(/<CONTROL_PLANE_(\d+)>/g, 'cp-$1');
    assert.doesNotMatch(filled, /<[A-Z0-9_]+>/, 'every placeholder is a control-plane node');
    const conf = join(dir, 'nats.conf');
    writeFileSync(conf, filled);
    const check = spawnSync(findNatsServer(), ['-t', '-c', conf], { encoding: 'utf8' });
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stderr, /configuration file .* is valid/);
  });

  it("carries a tunnel from the sidecar's command line through each agent's, with the servers' TLS and accounts", async () => {
    const web = await httpServer('web');
    const clientTls = readNatsConf(template).clientTls ?? '';
    const nats = await startLocalServer({
      extraConfig: `${readFileSync(join(dir, 'knats-accounts.conf'), 'utf8')}\n${clientTls.replaceAll(`${hostDir}/`, `${dir}/`)}`,
    });
    const url = nats.url.replace(/^nats:/, 'tls:');
    const uds = join(dir, 'fe.sock');
    const sidecar = report.pods
      .flatMap((p) => p.containers.map((c) => c.checked))
      .find((c) => c?.kind === 'frontend' && c.config.mode === 'grpc');
    assert.ok(sidecar?.kind === 'frontend', 'a gRPC sidecar');
    const { config: feConfig } = frontendConfig(
      [
        ...sidecar.inv.argv.slice(1).map((a) => local(a, 'frontend.nk')),
        ...['--nats-url', url, '--uds-name', uds, '--health-port', '0', '--admin-port', '0'],
      ],
      sidecar.inv.env,
    );
    const frontend = await startFrontend({ ...feConfig, logger: silentLogger() });
    try {
      for (const agent of agents()) {
        const { config } = agentConfig(
          [...agent.inv.argv.slice(1).map((a) => local(a, `agent-${agent.config.id}.nk`)), ...agentArgs(url)],
          agent.inv.env,
        );
        const running = await startAgent({ ...config, logger: silentLogger() });
        try {
          await eventually(() => frontend.debugState().agents === 1, `${config.id} known to the frontend`);
          await getThroughSocket(uds, web, config.id);
        } finally {
          await running.stop({ immediate: true });
        }
        await eventually(() => frontend.debugState().agents === 0, `${config.id} gone`);
      }
    } finally {
      await frontend.stop({ immediate: true });
      await nats.stop();
      await web.close();
    }
  });
});
