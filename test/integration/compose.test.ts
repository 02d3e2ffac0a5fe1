/**
 * docker-compose.yml and the Dockerfile checked against the real code.
 *
 * No Docker engine runs in CI, so `docker compose up` cannot prove the demo
 * works here. First the Compose Specification's published schema. Then what
 * no schema can know: every knats command line the compose file contains
 * (exec-form and string commands, the shell scripts they run, KNATS_*
 * environment variables) goes through the CLI's own validation:
 * frontendConfig()/agentConfig() for `frontend`/`agent`, the flag specs of
 * `dial`, `status` and `broker` through parseFlags(). Around them the wiring
 * is checked: services, volumes and networks that exist, files that are in
 * the repository or produced by a service started before, NATS URLs that
 * reach a NATS service, users that the NATS configuration knows with the same
 * password, one NATS user (seed, id) per agent, health checks on the health
 * port, UDS paths and proxy addresses that lead to the right frontend. A table
 * of deliberate mistakes proves each kind of check fires. The checks live in
 * test/helpers/ (compose-check.ts and the readers it uses);
 * compose-nats.test.ts runs the compose users on a real nats-server.
 */
import assert from 'node:assert/strict';
import { posix } from 'node:path';
import { describe, it } from 'node:test';
import { checkCompose } from '../helpers/compose-check.js';
import { itCatches, type Mistake } from '../helpers/deploy-mistakes.js';
import { COMPOSE_FILE, Repo } from '../helpers/deploy-repo.js';
import { parseDockerfile } from '../helpers/dockerfile.js';
import { programOf, shellCommands } from '../helpers/shell-reader.js';

describe('docker-compose.yml against the real CLI', () => {
  const repo = new Repo();

  it('validates every knats command line and everything around it', () => {
    checkCompose(repo);
  });

  it('has what issue 6 asks for: 3 NATS nodes, 2 frontends, 2 agents, 2 destinations, a looping client', () => {
    const { services } = checkCompose(repo);
    const all = [...services.values()];
    const checks = all.flatMap((s) => s.checked.map((c) => ({ svc: s, c })));
    assert.equal(all.filter((s) => /^nats:/.test(s.image)).length, 3, 'three nats services');
    const frontends = checks.flatMap(({ svc, c }) =>
      c.kind === 'frontend' ? [{ svc, config: c.config }] : [],
    );
    assert.ok(
      frontends.some(({ config }) => config.mode === 'grpc' && config.udsName),
      'a gRPC frontend on a UDS',
    );
    assert.ok(
      frontends.some(
        ({ config }) => config.mode === 'http-connect' && config.serverPort > 0 && config.serverCaCert,
      ),
      'an HTTP CONNECT frontend on mTLS TCP',
    );
    const agents = checks.flatMap(({ c }) => (c.kind === 'agent' ? [c.config] : []));
    assert.equal(agents.length, 2, 'two agents');
    assert.equal(new Set(agents.map((a) => a.identifiers.text)).size, 2, 'with different identifiers');
    const client = all.find((s) => s.checked.some((c) => c.kind === 'dial'));
    assert.ok(client, 'a client that runs knats dial');
    assert.ok(
      client.curls.some((c) => c.includes('--proxy')),
      'and curl through the HTTP CONNECT frontend',
    );
    assert.ok(
      client.checked.some((c) => c.kind === 'status'),
      'and knats status',
    );
    assert.equal((client.env.DEMO_TARGETS ?? '').split(/\s+/).filter(Boolean).length, 2, 'two destinations');
  });
});

describe('the Dockerfile', () => {
  const repo = new Repo();
  const source = repo.read('Dockerfile') ?? '';
  const image = parseDockerfile(source);
  const pkg = JSON.parse(repo.read('package.json') ?? '{}') as { bin?: Record<string, string> };

  it('runs the package bin as a non-root user', () => {
    assert.deepEqual(image.entrypoint, ['node', posix.join('/app', pkg.bin?.knats ?? '')]);
    assert.ok(image.user && !['root', '0'].includes(image.user.split(':')[0]!), `USER ${image.user}`);
  });

  it('builds with npm ci and npm run build, and ships no dev dependencies', () => {
    const build = image.stages[0]!;
    assert.match(build.from, /^(\$\{NODE_IMAGE\}|node:(22|24)-)/);
    const runs = build.lines.join('\n');
    assert.match(runs, /npm ci\b/);
    assert.match(runs, /npm run build\b/);
    assert.match(runs, /npm prune --omit=dev\b/);
    assert.match(source, /^ARG NODE_IMAGE=node:(22|24)-bookworm-slim$/m);
    const final = image.stages[image.stages.length - 1]!.lines.join('\n');
    for (const path of ['dist', 'node_modules', 'proto', 'package.json'])
      assert.match(final, new RegExp(`COPY --from=build /app/${path}\\b`), `runtime stage copies ${path}`);
  });

  it('downloads nothing but npm and Debian packages', () => {
    for (const stage of image.stages) {
      for (const line of stage.lines) {
        assert.doesNotMatch(line, /^ADD\s+\S*https?:/i, line);
        if (/^RUN\b/i.test(line)) assert.doesNotMatch(line, /\b(curl|wget|git\s+clone)\b.*https?:\/\//, line);
      }
    }
  });

  it('.dockerignore keeps everything the build copies and compiles', () => {
    const ignored = (repo.read('.dockerignore') ?? '')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    const isIgnored = (path: string) =>
      ignored.some(
        (p) =>
          path === p ||
          path.startsWith(`${p.replace(/\/$/, '')}/`) ||
          (p.startsWith('*') && path.endsWith(p.slice(1))),
      );
    const tsconfig = JSON.parse(repo.read('tsconfig.json') ?? '{}') as { include?: string[] };
    const needed = [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'proto',
      ...image.copies.map((c) => c.src),
      ...(tsconfig.include ?? []).map((p) => p.split('/')[0]!).filter((p) => p !== 'test'),
    ];
    for (const path of needed) assert.ok(!isIgnored(path) && repo.exists(path), `${path} reaches the build`);
  });
});

describe('deliberate mistakes are caught', () => {
  const mistakes: Mistake[] = [
    // caught by the Compose Specification's schema
    {
      what: 'a misspelled service key',
      file: COMPOSE_FILE,
      from: 'entrypoint: ["sh", "/app/deploy/demo-client.sh"]',
      to: 'entry_point: ["sh", "/app/deploy/demo-client.sh"]',
      caught: /Compose Specification: \/services\/client must NOT have additional properties/,
    },
    {
      what: 'a depends_on condition Compose does not know',
      file: COMPOSE_FILE,
      from: '      certs:\n        condition: service_completed_successfully',
      to: '      certs:\n        condition: service_completed',
      caught:
        /Compose Specification: \/services\/frontend-connect\/depends_on\/certs\/condition must be equal to one of the allowed values/,
    },
    {
      what: 'a duration Compose cannot read',
      file: COMPOSE_FILE,
      from: '\n    interval: 2s',
      to: '\n    interval: 2 seconds',
      caught: /Compose Specification: \/services\/nats-1\/healthcheck\/interval must match format "duration"/,
    },
    // what no schema knows: our CLI, the files' references to each other, TLS
    {
      what: 'two compose agents sharing one NATS user',
      file: COMPOSE_FILE,
      from: 'KNATS_NATS_USER: agent-b\n      KNATS_NATS_PASSWORD: demo-agent-b-secret',
      to: 'KNATS_NATS_USER: agent-a\n      KNATS_NATS_PASSWORD: demo-agent-a-secret',
      caught: /services\.agent-b: shares NATS user agent-a with agent-a/,
    },
    {
      what: 'a misspelled flag in an exec-form command',
      file: COMPOSE_FILE,
      from: '- --proxy-strategies=destHost,default',
      to: '- --proxy-strategy=destHost,default',
      caught: /services\.frontend-grpc.*--proxy-strategy: unknown flag/,
    },
    {
      what: 'a misspelled flag in a separate-token command',
      file: COMPOSE_FILE,
      from: '      - --agent-identifiers\n',
      to: '      - --agent-identifier\n',
      caught: /services\.agent-b.*--agent-identifier: unknown flag/,
    },
    {
      what: 'a misspelled flag in a string command',
      file: COMPOSE_FILE,
      from: '--server-cert /certs/server.crt',
      to: '--server-crt /certs/server.crt',
      caught: /services\.frontend-connect.*--server-crt: unknown flag/,
    },
    {
      what: 'a bad value',
      file: COMPOSE_FILE,
      from: '- --mode=grpc',
      to: '- --mode=grcp',
      caught: /--mode: must be grpc or http-connect/,
    },
    {
      what: 'a misspelled flag in the shell script the client runs',
      file: 'deploy/demo-client.sh',
      from: '--uds-name "$uds"',
      to: '--uds "$uds"',
      caught: /services\.client \(shell\).*--uds: unknown flag/,
    },
    {
      what: 'a bad duration in the shell script',
      file: 'deploy/demo-client.sh',
      from: 'knats status --wait 1s',
      to: 'knats status --wait 1',
      caught: /--wait: expected a duration/,
    },
    {
      what: 'a bad KNATS_* environment variable',
      file: COMPOSE_FILE,
      from: 'x-nats-url: &nats-url tls://nats-1:4222',
      to: 'x-nats-url: &nats-url http://nats-1:4222',
      caught: /--nats-url: "http:\/\/nats-1:4222" is not a NATS URL/,
    },
    {
      what: 'a NATS URL naming no NATS service',
      file: COMPOSE_FILE,
      from: 'tls://nats-3:4222\n',
      to: 'tls://nats-4:4222\n',
      caught: /NATS URL tls:\/\/nats-4:4222 does not name a NATS service/,
    },
    {
      what: 'a plaintext NATS URL',
      file: COMPOSE_FILE,
      from: 'x-nats-url: &nats-url tls://nats-1:4222',
      to: 'x-nats-url: &nats-url nats://nats-1:4222',
      caught: /NATS URL nats:\/\/nats-1:4222 is not tls:\/\//,
    },
    {
      what: 'an agent that does not verify the NATS servers',
      file: COMPOSE_FILE,
      from: '      - --nats-tls-ca\n      - /nats-tls/ca.crt\n',
      to: '',
      caught: /services\.agent-b.*without --nats-tls-ca/,
    },
    {
      what: 'an agent verifying NATS with the wrong CA',
      file: COMPOSE_FILE,
      from: '      - --nats-tls-ca\n      - /nats-tls/ca.crt\n',
      to: '      - --nats-tls-ca\n      - /certs/ca.crt\n',
      caught: /services\.agent-b.*(not the CA of the NATS servers|no service it depends on writes)/,
    },
    {
      what: 'a NATS certificate missing a node',
      file: COMPOSE_FILE,
      from: '"nats-1", "nats-2", "nats-3"',
      to: '"nats-1", "nats-2"',
      caught:
        /nats-certs issues the NATS certificate for nats-1, nats-2, localhost, 127\.0\.0\.1, not nats-3/,
    },
    {
      what: 'NATS servers without client TLS',
      file: 'deploy/nats/cluster.conf',
      from: '\ntls {\n',
      to: '\nno_tls {\n',
      caught: /no tls block: clients would talk to NATS in plaintext/,
    },
    {
      what: 'NATS routes without TLS',
      file: 'deploy/nats/cluster.conf',
      from: '  tls {\n    cert_file',
      to: '  no_tls {\n    cert_file',
      caught: /no tls block in cluster: routes in plaintext/,
    },
    {
      what: 'a NATS user the servers do not know',
      file: COMPOSE_FILE,
      from: 'KNATS_NATS_USER: agent-a',
      to: 'KNATS_NATS_USER: agent-x',
      caught: /NATS user agent-x is not a user/,
    },
    {
      what: 'a password that differs from the NATS configuration',
      file: 'deploy/nats/auth.conf',
      from: 'password: demo-agent-b-secret',
      to: 'password: rotated',
      caught: /services\.agent-b.*password of NATS user agent-b differs/,
    },
    {
      what: 'a healthcheck on the wrong port',
      file: COMPOSE_FILE,
      from: 'http://127.0.0.1:9093/readyz',
      to: 'http://127.0.0.1:9094/readyz',
      caught: /services\.agent-b.*healthcheck probes port 9094, but the health port is 9093/,
    },
    {
      what: 'a dependency that does not exist',
      file: COMPOSE_FILE,
      from: '      web-b:\n        condition: service_healthy',
      to: '      web-c:\n        condition: service_healthy',
      caught: /depends_on web-c, which is not a service/,
    },
    {
      what: 'an undeclared volume',
      file: COMPOSE_FILE,
      from: '  knats-uds: {}\n',
      to: '',
      caught: /volume knats-uds is not declared/,
    },
    {
      what: 'a client dialing a socket no frontend serves',
      file: COMPOSE_FILE,
      from: '- --uds-name=/run/knats/konnectivity-server.socket',
      to: '- --uds-name=/run/knats/other.socket',
      caught: /dials --uds-name \/run\/knats\/konnectivity-server\.socket, which no gRPC frontend serves/,
    },
    {
      what: 'a TCP frontend bound to loopback in a container',
      file: COMPOSE_FILE,
      from: '--server-bind-address 0.0.0.0',
      to: '--server-bind-address 127.0.0.1',
      caught: /frontend-connect listens on 127\.0\.0\.1 only/,
    },
    {
      what: 'a script path that does not exist',
      file: COMPOSE_FILE,
      from: '"/app/deploy/demo-client.sh"',
      to: '"/app/deploy/demo-clients.sh"',
      caught:
        /script \/app\/deploy\/demo-clients\.sh is deploy\/demo-clients\.sh in the repository, which does not exist/,
    },
    {
      what: 'a stop grace period shorter than the drain',
      file: COMPOSE_FILE,
      from: '- --agent-identifiers=host=web-a\n      - --graceful-shutdown-timeout=20s',
      to: '- --agent-identifiers=host=web-a\n      - --graceful-shutdown-timeout=40s',
      caught: /services\.agent-a.*stop_grace_period 30s does not exceed --graceful-shutdown-timeout/,
    },
    {
      what: 'a certificate that does not name the proxy host',
      file: COMPOSE_FILE,
      from: '"/certs", "frontend-connect", "localhost"',
      to: '"/certs", "frontend", "localhost"',
      caught:
        /certs issues the frontend certificate for frontend, localhost, 127\.0\.0\.1, not frontend-connect/,
    },
    {
      what: 'curl proxying http:// without CONNECT',
      file: 'deploy/demo-client.sh',
      from: '--proxy "$proxy" --proxytunnel',
      to: '--proxy "$proxy"',
      caught: /without --proxytunnel; frontends take CONNECT only/,
    },
  ];
  itCatches(mistakes);
});

describe('the shell reader finds what a shell would run', () => {
  it('expands variables, defaults, quotes, pipes and command substitutions', () => {
    const script = `uds=\${DEMO_UDS:-/run/default.sock}
other=\${UNSET:-fallback}
out=$(printf 'x %s' "$1" |
  knats dial --uds-name "$uds" --timeout 5s "$1" 2>&1)
if [ "$(date)" ]; then KNATS_LOG_LEVEL=debug exec node /app/dist/cli.js status --json; fi # knats ignored
echo 'knats frontend --bogus' >/dev/null
`;
    const commands = shellCommands(script, { DEMO_UDS: '/run/knats/s.sock' }, ['web:80']);
    const knats = commands.filter((c) => programOf(c.words).program === 'knats');
    assert.deepEqual(
      knats.map((c) => programOf(c.words).args),
      [
        ['dial', '--uds-name', '/run/knats/s.sock', '--timeout', '5s', 'web:80'],
        ['status', '--json'],
      ],
    );
    assert.deepEqual(knats[1]!.env, { KNATS_LOG_LEVEL: 'debug' });
  });
});
