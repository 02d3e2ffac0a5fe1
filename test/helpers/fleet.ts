/**
 * Starts real components for tests: a nats-server (the project's launcher),
 * frontends and agents in-process (for reading their state) or as child
 * processes of the real CLI (for kill -9 tests).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type RunningAgent, startAgent } from '../../agent/agent.js';
import { createLogger, type Logger, silentLogger } from '../../broker/logging.js';
import { type LocalServer, startLocalServer } from '../../broker/nats-server/local-server.js';
import { agentConfig, frontendConfig } from '../../cli/config.js';
import { type RunningFrontend, startFrontend } from '../../frontend/frontend.js';

export const cliPath = fileURLToPath(new URL('../../cli.js', import.meta.url));

function testLogger(name: string): Logger {
  return process.env.KNATS_TEST_LOG ? createLogger({ name, level: 'debug' }) : silentLogger();
}

/** What every test frontend gets: the bus, its socket, health and admin ports the OS picks. */
export function frontendArgs(natsUrl: string, uds: string, extra: readonly string[] = []): string[] {
  return ['--nats-url', natsUrl, '--uds-name', uds, '--health-port', '0', '--admin-port', '0', ...extra];
}

/**
 * The agents' default policy denies loopback, and test destinations listen
 * on loopback: test agents allow everything plus these exact entries. A test
 * that sets its own --allow-destinations (the last one wins) names what it needs.
 */
export const TEST_ALLOWED_DESTINATIONS = '*,127.0.0.1,::1';

/** What every test agent gets: the bus, health and admin ports the OS picks, loopback destinations. */
export function agentArgs(natsUrl: string, extra: readonly string[] = []): string[] {
  return [
    '--nats-url',
    natsUrl,
    '--health-server-port',
    '0',
    '--admin-server-port',
    '0',
    '--allow-destinations',
    TEST_ALLOWED_DESTINATIONS,
    ...extra,
  ];
}

export class Fleet {
  readonly dir = mkdtempSync(join(tmpdir(), 'knats-test-'));
  nats!: LocalServer;
  readonly frontends: RunningFrontend[] = [];
  private readonly prefixOf = new WeakMap<RunningFrontend, string>();
  readonly agents: RunningAgent[] = [];
  readonly children: ChildProcess[] = [];
  private sockets = 0;

  async startNats(): Promise<LocalServer> {
    this.nats = await startLocalServer({});
    return this.nats;
  }

  socketPath(): string {
    return join(this.dir, `fe-${++this.sockets}.sock`);
  }

  /** In-process frontend on a fresh UDS; extra CLI flags override the defaults. */
  async frontend(extra: string[] = []): Promise<RunningFrontend & { uds: string }> {
    const uds = this.socketPath();
    const { config } = frontendConfig(frontendArgs(this.nats.url, uds, extra), {});
    const frontend = await startFrontend({ ...config, logger: testLogger(`frontend-${config.id}`) });
    this.frontends.push(frontend);
    this.prefixOf.set(frontend, config.subjectPrefix);
    return Object.assign(frontend, { uds });
  }

  /**
   * In-process agent; resolves once every in-process frontend of its subject
   * prefix may route to it (frontends learn agents from heartbeats, a moment
   * after the agent is ready).
   */
  async agent(extra: string[] = []): Promise<RunningAgent> {
    const { config } = agentConfig(agentArgs(this.nats.url, extra), {});
    const peers = this.frontends.filter(
      (f) => this.prefixOf.get(f) === config.subjectPrefix && f.debugState().draining === false,
    );
    const known = peers.map((f) => Number(f.debugState().agentsTakingDials));
    const agent = await startAgent({ ...config, logger: testLogger(`agent-${config.id}`) });
    this.agents.push(agent);
    await Promise.all(
      peers.map((f, i) =>
        eventually(() => Number(f.debugState().agentsTakingDials) > known[i]!, `agent ${config.id} known`),
      ),
    );
    return agent;
  }

  /**
   * A `knats` child process; resolves once it logged `readyMessage` (a log line's msg, or a pattern), with the
   * ports it logged (health/admin servers).
   */
  async spawn(
    args: string[],
    readyMessage: string | RegExp,
  ): Promise<{ child: ChildProcess; healthPort: number; logs: Record<string, unknown>[] }> {
    const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.children.push(child);
    let healthPort = 0;
    let buffer = '';
    // Every JSON log line the process writes, for tests that read its story.
    const logs: Record<string, unknown>[] = [];
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${args[0]} not ready in 15 s:\n${buffer}`)), 15_000);
      child.stderr!.on('data', (chunk: Buffer) => {
        buffer += chunk.toString();
        let nl = buffer.indexOf('\n');
        while (nl >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          nl = buffer.indexOf('\n');
          try {
            const entry = JSON.parse(line) as { msg?: string; port?: number; server?: string };
            logs.push(entry);
            if (entry.msg === 'health server listening' && !entry.server && !healthPort)
              healthPort = entry.port ?? 0;
            if (
              typeof readyMessage === 'string'
                ? entry.msg === readyMessage
                : readyMessage.test(entry.msg ?? '')
            ) {
              clearTimeout(timer);
              resolve();
            }
          } catch {
            // not a log line
          }
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`${args[0]} exited with ${code}:\n${buffer}`));
      });
    });
    return { child, healthPort, logs };
  }

  /** A frontend child process of the real CLI on `uds`. */
  spawnFrontend(
    uds: string,
    extra: readonly string[] = [],
    readyMessage: string | RegExp = 'frontend ready',
  ) {
    return this.spawn(['frontend', ...frontendArgs(this.nats.url, uds, extra)], readyMessage);
  }

  /** An agent child process of the real CLI. */
  spawnAgent(extra: readonly string[] = [], readyMessage: string | RegExp = 'agent ready') {
    return this.spawn(['agent', ...agentArgs(this.nats.url, extra)], readyMessage);
  }

  async stop(): Promise<void> {
    for (const child of this.children) if (child.exitCode === null) child.kill('SIGKILL');
    await Promise.all(this.frontends.map((f) => f.stop({ immediate: true })));
    await Promise.all(this.agents.map((a) => a.stop({ immediate: true })));
    await this.nats?.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface CliRun {
  /** null when it had to be killed after `timeoutMs`. */
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `knats ...args` to its end (killed after `timeoutMs`), with `input` on stdin. */
export function runCli(
  args: readonly string[],
  { input = '', timeoutMs = 15_000 }: { input?: string; timeoutMs?: number } = {},
): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}

export async function eventually<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function fetchText(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

/**
 * Sum of the samples matching `selector` (`name` or `name{label="v",...}`);
 * labels not named in the selector (such as role) are ignored.
 */
export async function metric(healthPort: number, selector: string): Promise<number> {
  const [, name, wanted = ''] = /^([^{]+)(?:\{(.*)\})?$/.exec(selector)!;
  const labels = wanted ? wanted.split(',') : [];
  const { body } = await fetchText(healthPort, '/metrics');
  let total = 0;
  for (const line of body.split('\n')) {
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!sample || sample[1] !== name) continue;
    const have = (sample[2] ?? '').split(',');
    if (labels.every((l) => have.includes(l))) total += Number(sample[3]);
  }
  return total;
}
