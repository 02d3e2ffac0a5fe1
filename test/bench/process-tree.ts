/**
 * The bench's process tree: nats-server, the gRPC and HTTP CONNECT frontends
 * and the agent as child processes of the real CLI, the destinations, the
 * baseline relays and the two load workers, each a process of its own.
 */

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, type LocalServer, startLocalServer } from '../../broker/nats-server/local-server.js';
import { TEST_ALLOWED_DESTINATIONS } from '../helpers/fleet.js';
import type { Options } from './bench-options.js';
import { CONNECT_NA, type DestinationPorts, type Endpoints } from './common.js';
import {
  firstJsonLine,
  LoadWorker,
  type Proc,
  retryOnPortTaken,
  spawnNode,
  stopProc,
  waitReady,
} from './procs.js';
import { progress } from './progress.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const cliPath = path.resolve(here, '../../cli.js');
const script = (name: string) => path.join(here, `${name}.js`);

export interface Component {
  proc: Proc;
  healthPort: number;
  /** /debug/state is served on the admin port only. */
  adminPort: number;
  uds?: string;
}

export class Fleet {
  nats!: LocalServer;
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'knats-bench-'));
  dest!: Proc;
  destPorts!: DestinationPorts;
  relay!: Proc;
  relayPorts!: DestinationPorts;
  grpcRelay!: Proc;
  natsRelayFront!: Proc;
  natsRelayBack!: Proc;
  natsRelayPort!: number;
  readonly grpcRelayUds = path.join(this.dir, 'grpc-relay.sock');
  agent!: Component;
  grpcFrontend!: Component;
  connectFrontend: Component | undefined;
  connectNa: string | undefined;
  workers: LoadWorker[] = [];
  private profileSeq = 0;

  constructor(private readonly options: Options) {}

  private nodeFlags(name: string): string[] {
    if (!this.options.cpuProfDir) return [];
    return [
      '--cpu-prof',
      `--cpu-prof-dir=${this.options.cpuProfDir}`,
      `--cpu-prof-name=${name}-${++this.profileSeq}.cpuprofile`,
    ];
  }

  async start(): Promise<void> {
    progress('starting nats-server');
    this.nats = await startLocalServer({});
    progress('starting destinations and baseline relays');
    this.dest = spawnNode('destinations', script('destinations'), []);
    this.destPorts = await firstJsonLine<DestinationPorts>(this.dest);
    await Promise.all([this.startRelay(), this.startGrpcRelay(), this.startNatsRelay()]);
    progress('starting agent and frontends');
    this.agent = await this.startAgent();
    const [grpcFrontend] = await Promise.all([this.startFrontend('grpc'), this.startConnectFrontend()]);
    this.grpcFrontend = grpcFrontend;
    this.workers = [new LoadWorker('load-1', script('load')), new LoadWorker('load-2', script('load'))];
    await this.initWorkers();
    // The floor's far end: load-2 answers load-1's kind 'nats' dials and pings.
    await this.workers[1]!.request({ cmd: 'nats-floor-serve' });
  }

  endpoints(): Endpoints {
    const endpoints: Endpoints = {
      dest: this.destPorts,
      relay: this.relayPorts,
      grpcRelayUds: this.grpcRelayUds,
      natsUrl: this.nats.url,
      natsRelayPort: this.natsRelayPort,
    };
    if (this.grpcFrontend.uds) endpoints.grpcUds = this.grpcFrontend.uds;
    if (this.connectFrontend?.uds) endpoints.connectUds = this.connectFrontend.uds;
    return endpoints;
  }

  async initWorkers(): Promise<void> {
    const endpoints = this.endpoints();
    await Promise.all(this.workers.map((w) => w.request({ cmd: 'init', endpoints })));
  }

  async startRelay(): Promise<void> {
    this.relay = spawnNode('tcp-relay', script('relay'), ['tcp', JSON.stringify(this.destPorts)]);
    this.relayPorts = await firstJsonLine<DestinationPorts>(this.relay);
  }

  /** The smallest NATS tunnel (nats-relay.ts), for the round-trip floor with a socket at each end. */
  async startNatsRelay(): Promise<void> {
    this.natsRelayBack = spawnNode('nats-relay-back', script('nats-relay'), [
      'back',
      this.nats.url,
      String(this.destPorts.echo),
    ]);
    await firstJsonLine(this.natsRelayBack);
    this.natsRelayFront = spawnNode('nats-relay-front', script('nats-relay'), ['front', this.nats.url]);
    this.natsRelayPort = (await firstJsonLine<{ port: number }>(this.natsRelayFront)).port;
  }

  async startGrpcRelay(): Promise<void> {
    rmSync(this.grpcRelayUds, { force: true });
    this.grpcRelay = spawnNode('grpc-relay', script('relay'), ['grpc', this.grpcRelayUds]);
    await firstJsonLine(this.grpcRelay);
  }

  startAgent(): Promise<Component> {
    return retryOnPortTaken(() => this.startAgentOnce());
  }

  private async startAgentOnce(): Promise<Component> {
    const healthPort = await freePort();
    const adminPort = await freePort();
    const extra = (process.env.BENCH_AGENT_ARGS ?? '').split(' ').filter((s) => s !== '');
    const proc = spawnNode(
      'agent',
      cliPath,
      [
        'agent',
        '--nats-url',
        this.nats.url,
        '--health-server-port',
        String(healthPort),
        '--admin-server-port',
        String(adminPort),
        '--log-level',
        'warn',
        '--graceful-shutdown-timeout',
        '2s',
        '--allow-destinations',
        TEST_ALLOWED_DESTINATIONS,
        ...extra,
      ],
      this.nodeFlags('agent'),
    );
    await waitReady(proc, healthPort);
    return { proc, healthPort, adminPort };
  }

  startFrontend(mode: 'grpc' | 'http-connect'): Promise<Component> {
    return retryOnPortTaken(() => this.startFrontendOnce(mode));
  }

  private async startFrontendOnce(mode: 'grpc' | 'http-connect'): Promise<Component> {
    const healthPort = await freePort();
    const adminPort = await freePort();
    const uds = path.join(this.dir, `frontend-${mode}-${healthPort}.sock`);
    const extra = (process.env.BENCH_FRONTEND_ARGS ?? '').split(' ').filter((s) => s !== '');
    const proc = spawnNode(
      `frontend-${mode}`,
      cliPath,
      [
        'frontend',
        '--mode',
        mode,
        '--nats-url',
        this.nats.url,
        '--uds-name',
        uds,
        '--health-port',
        String(healthPort),
        '--admin-port',
        String(adminPort),
        '--log-level',
        'warn',
        '--graceful-shutdown-timeout',
        '2s',
        ...extra,
      ],
      this.nodeFlags(`frontend-${mode}`),
    );
    await waitReady(proc, healthPort);
    return { proc, healthPort, adminPort, uds };
  }

  /** A frontend in --mode http-connect, or n/a when this build has none (the CLI exits 2). */
  async startConnectFrontend(): Promise<void> {
    try {
      this.connectFrontend = await this.startFrontend('http-connect');
      this.connectNa = undefined;
    } catch (err) {
      const code = (err as { exitCode?: unknown }).exitCode;
      if (code === 2) {
        this.connectFrontend = undefined;
        this.connectNa = CONNECT_NA;
        return;
      }
      throw err;
    }
  }

  /** Fresh agent and frontend processes, so RSS deltas are not hidden by reused heap. */
  async restart(which: 'grpc' | 'http-connect'): Promise<void> {
    await stopProc(this.agent.proc);
    if (which === 'grpc') {
      await stopProc(this.grpcFrontend.proc);
      this.agent = await this.startAgent();
      this.grpcFrontend = await this.startFrontend('grpc');
      await waitReady(this.grpcFrontend.proc, this.grpcFrontend.healthPort);
    } else if (this.connectFrontend) {
      await stopProc(this.connectFrontend.proc);
      this.agent = await this.startAgent();
      this.connectFrontend = await this.startFrontend('http-connect');
    }
    await Promise.all(
      [this.grpcFrontend, this.connectFrontend].flatMap((c) =>
        c && c.proc.exitCode() === undefined ? [waitReady(c.proc, c.healthPort)] : [],
      ),
    );
    await this.initWorkers();
  }

  /** Every process whose CPU time is recorded per measurement. */
  cpuProcs(): Record<string, number> {
    const pids: Record<string, number> = {
      frontendGrpc: this.grpcFrontend.proc.pid,
      agent: this.agent.proc.pid,
      natsServer: this.nats.pid,
      destinations: this.dest.pid,
      tcpRelay: this.relay.pid,
      grpcRelay: this.grpcRelay.pid,
    };
    if (this.connectFrontend) pids.frontendConnect = this.connectFrontend.proc.pid;
    this.workers.forEach((w, i) => {
      pids[`load${i + 1}`] = w.proc.pid;
    });
    return pids;
  }

  async stop(): Promise<void> {
    for (const w of this.workers) w.proc.child.kill('SIGKILL');
    const graceful = [this.grpcFrontend, this.connectFrontend, this.agent].flatMap((c) =>
      c ? [stopProc(c.proc, this.options.cpuProfDir ? 15_000 : 5000)] : [],
    );
    await Promise.allSettled(graceful);
    for (const p of [this.dest, this.relay, this.grpcRelay, this.natsRelayFront, this.natsRelayBack]) {
      if (p) await stopProc(p, 2000);
    }
    await this.nats?.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
