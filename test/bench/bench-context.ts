/**
 * What every scenario measures with: the fleet, the sizes, the rows and CPU
 * records collected so far, the CPU accounting around a measured run and the
 * idle-tunnel helpers several scenarios share; plus the small number helpers.
 */
import { performance } from 'node:perf_hooks';
import type { Options, Sizes } from './bench-options.js';
import type { CpuRecord, DialStages, IdleOpenResult, Kind, Row, Scenario } from './common.js';
import type { Component, Fleet } from './process-tree.js';
import { cpuSeconds, httpGet, type LoadWorker } from './procs.js';

export class Bench {
  readonly rows: Row[] = [];
  readonly cpu: CpuRecord[] = [];
  readonly errors: string[] = [];
  /** The frontends' dial stage histogram over the sequential dials (gRPC on a warm connection, CONNECT). */
  dialStages: DialStages | undefined;
  /** Throughput round in progress (0: none). */
  round = 0;
  constructor(
    readonly fleet: Fleet,
    readonly sizes: Sizes,
    readonly options: Options,
  ) {}

  /** How long RSS readings wait for the processes to settle. */
  get settleMs(): number {
    return this.options.quick ? 400 : 1500;
  }

  roundLabel(): string {
    return this.sizes.throughputRounds > 1 ? ` (round ${this.round}/${this.sizes.throughputRounds})` : '';
  }

  get w1(): LoadWorker {
    return this.fleet.workers[0]!;
  }
  get w2(): LoadWorker {
    return this.fleet.workers[1]!;
  }
  get connectAvailable(): boolean {
    return this.fleet.connectFrontend !== undefined;
  }

  /** Runs `fn`, recording the CPU time each process spent meanwhile. */
  async measured<T>(what: string, fn: () => Promise<T>, bytes?: number): Promise<T> {
    const pids = this.fleet.cpuProcs();
    const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]));
    const t0 = performance.now();
    const result = await fn();
    const wallSeconds = (performance.now() - t0) / 1000;
    const cpu: Record<string, number> = {};
    for (const [k, pid] of Object.entries(pids)) {
      const used = cpuSeconds(pid) - before[k]!;
      if (Number.isFinite(used)) cpu[k] = Math.round(used * 100) / 100;
    }
    const record: CpuRecord = { what, wallSeconds: Math.round(wallSeconds * 1000) / 1000, cpu };
    if (bytes !== undefined) record.bytes = bytes;
    this.cpu.push(record);
    return result;
  }

  add(row: Row): void {
    this.rows.push(row);
  }

  naRows(scenario: Scenario, figures: string[], unit: string, target?: string): void {
    for (const figure of figures) {
      const row: Row = { scenario, figure, value: null, unit, na: this.fleet.connectNa ?? 'n/a' };
      if (target) row.target = target;
      this.add(row);
    }
  }

  /** Opens `count` idle tunnels split over both workers. */
  async openIdle(kind: Kind, count: number): Promise<void> {
    const half = Math.ceil(count / 2);
    const results = await Promise.all([
      this.w1.request<IdleOpenResult>({ cmd: 'idle-open', kind, count: half, concurrency: 32 }),
      this.w2.request<IdleOpenResult>({ cmd: 'idle-open', kind, count: count - half, concurrency: 32 }),
    ]);
    const failed = results.reduce((n, r) => n + r.failed, 0);
    if (failed > 0) {
      throw new Error(
        `${failed} of ${count} idle ${kind} tunnels failed: ${results.find((r) => r.firstError)?.firstError}`,
      );
    }
  }

  async closeIdle(): Promise<void> {
    await Promise.all([this.w1.request({ cmd: 'idle-close' }), this.w2.request({ cmd: 'idle-close' })]);
  }

  /** Tunnels open in each component now (from /debug/state). */
  async openTunnels(components: Component[]): Promise<number[]> {
    return Promise.all(
      components.map(async (c) => {
        const state = JSON.parse((await httpGet(c.adminPort, '/debug/state')).body) as { tunnels?: unknown };
        return Number(state.tunnels ?? 0);
      }),
    );
  }

  /** Polls until no component has an open tunnel, up to `limitSeconds`. */
  async waitTunnelsClosed(
    components: Component[],
    limitSeconds: number,
  ): Promise<{ closed: boolean; seconds: number; open: number[] }> {
    const started = performance.now();
    for (;;) {
      const open = await this.openTunnels(components);
      const seconds = (performance.now() - started) / 1000;
      if (open.every((n) => n === 0)) return { closed: true, seconds, open };
      if (seconds >= limitSeconds) return { closed: false, seconds, open };
      await sleep(100);
    }
  }
}

/** Issue 13: the frontend and the agent each spend at most this much CPU per MiB moved. */
export const CPU_TARGET: Target = { text: '<= 1.5 ms/MiB', ok: (v) => v <= 1.5 };

export interface Target {
  text: string;
  ok(value: number): boolean;
}

export function mapValues<T, U>(record: Record<string, T>, fn: (v: T, k: string) => U): Record<string, U> {
  return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, fn(v, k)]));
}

export function round(value: number, digits: number): number {
  if (!Number.isFinite(value)) return value;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
