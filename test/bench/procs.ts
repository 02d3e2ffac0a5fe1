/**
 * The benchmark's process tree: spawning children of the real CLI and of the
 * bench scripts, forked load workers with an IPC request/reply channel,
 * /proc readings (RSS, CPU time), and cleanup that runs even on errors and
 * signals.
 */
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { WorkerCommand, WorkerReply, WorkerRequest } from './common.js';

export interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** The last lines the process wrote to stderr (for error messages). */
  stderrTail(): string;
  /** Lines written to stdout so far; 'line' events on `lines` for new ones. */
  readonly stdoutLines: string[];
  readonly lines: EventEmitter;
  /** Resolves with the exit code (or the signal name) once it exited. */
  readonly exited: Promise<number | string>;
  exitCode(): number | string | undefined;
}

const live = new Set<Proc>();

function wrap(name: string, child: ChildProcess): Proc {
  const tail: string[] = [];
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    tail.push(chunk);
    while (tail.length > 40) tail.shift();
  });
  const stdoutLines: string[] = [];
  const lines = new EventEmitter();
  let partial = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    partial += chunk;
    let nl = partial.indexOf('\n');
    while (nl >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      if (stdoutLines.length < 100) stdoutLines.push(line);
      lines.emit('line', line);
      nl = partial.indexOf('\n');
    }
  });
  let code: number | string | undefined;
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (c, signal) => {
      code = c ?? signal ?? 'unknown';
      live.delete(proc);
      resolve(code);
    });
    child.once('error', (err) => {
      code = `spawn error: ${err.message}`;
      live.delete(proc);
      resolve(code);
    });
  });
  const proc: Proc = {
    name,
    child,
    pid: child.pid ?? 0,
    stderrTail: () => tail.join('').trim().split('\n').slice(-15).join('\n'),
    stdoutLines,
    lines,
    exited,
    exitCode: () => code,
  };
  live.add(proc);
  return proc;
}

/** A node child process; stdin is a pipe, so closing it (our exit) tells scripts to stop. */
export function spawnNode(name: string, script: string, args: string[], nodeFlags: string[] = []): Proc {
  const child = spawn(process.execPath, [...nodeFlags, script, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return wrap(name, child);
}

/** Waits for the first stdout line of `proc` and parses it as JSON. */
export function firstJsonLine<T>(proc: Proc, timeoutMs = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${proc.name}: no output within ${timeoutMs} ms\n${proc.stderrTail()}`)),
      timeoutMs,
    );
    const onLine = (line: string) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(line) as T);
      } catch (err) {
        reject(new Error(`${proc.name}: bad first line ${line}: ${String(err)}`));
      }
    };
    if (proc.stdoutLines.length > 0) onLine(proc.stdoutLines[0]!);
    else proc.lines.once('line', onLine);
    void proc.exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${proc.name} exited with ${code}\n${proc.stderrTail()}`));
    });
  });
}

export async function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.text() };
}

/**
 * Polls /readyz until 200; rejects if the process exits first (with its exit
 * code in `exitCode` of the error) or after the timeout.
 */
export async function waitReady(proc: Proc, healthPort: number, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const code = proc.exitCode();
    if (code !== undefined) {
      throw Object.assign(new Error(`${proc.name} exited with ${code}: ${proc.stderrTail()}`), {
        exitCode: code,
      });
    }
    try {
      const res = await httpGet(healthPort, '/readyz');
      if (res.status === 200) return;
      last = res.body.trim();
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) {
      throw new Error(`${proc.name} not ready within ${timeoutMs} ms (${last})\n${proc.stderrTail()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const PORT_PICK_TRIES = 4;

/**
 * Runs `start` until it does not fail for a port taken between our pick and
 * the child's bind: a picked port is free only for a moment, and on a busy
 * machine an outgoing connection may take it as its ephemeral port first.
 */
export async function retryOnPortTaken<T>(start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (err) {
      if (attempt >= PORT_PICK_TRIES || !String((err as Error).message).includes('address already in use'))
        throw err;
    }
  }
}

/** SIGTERM (a graceful stop writes --cpu-prof profiles), SIGKILL after `graceMs`. */
export async function stopProc(proc: Proc, graceMs = 5000): Promise<void> {
  if (proc.exitCode() !== undefined) return;
  proc.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const killed = await Promise.race([
    proc.exited.then(() => false),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), graceMs);
    }),
  ]);
  clearTimeout(timer);
  if (killed) {
    proc.child.kill('SIGKILL');
    await proc.exited;
  }
}

/** Last resort, synchronous (process 'exit'): SIGKILL whatever is still running. */
export function killAllSync(): void {
  for (const proc of live) {
    try {
      proc.child.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  live.clear();
}

export function liveProcs(): Proc[] {
  return [...live];
}

// ---- /proc readings ----------------------------------------------------------------

/** Resident set size in KiB (VmRSS), or NaN when the process is gone. */
export function rssKiB(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return match ? Number(match[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

const CLOCK_TICKS = 100;

/** User + system CPU seconds used so far, or NaN when the process is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

// ---- load workers -------------------------------------------------------------------

export class LoadWorker {
  readonly proc: Proc;
  readonly events = new EventEmitter();
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();

  constructor(name: string, script: string) {
    const child = fork(script, [], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], execArgv: [] });
    this.proc = wrap(name, child);
    child.on('message', (reply: WorkerReply) => {
      if (reply.event) {
        this.events.emit(reply.event);
        return;
      }
      const waiter = this.pending.get(reply.id);
      if (!waiter) return;
      this.pending.delete(reply.id);
      if (reply.error !== undefined) waiter.reject(new Error(`${name}: ${reply.error}`));
      else waiter.resolve(reply.result);
    });
    void this.proc.exited.then((code) => {
      for (const waiter of this.pending.values()) {
        waiter.reject(new Error(`${name} exited with ${code}\n${this.proc.stderrTail()}`));
      }
      this.pending.clear();
    });
  }

  request<T>(command: WorkerCommand, timeoutMs = 600_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.proc.name}: ${command.cmd} took over ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.proc.child.send({ id, command } satisfies WorkerRequest);
    });
  }

  once(event: string, timeoutMs = 30_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.proc.name}: no ${event} event`)), timeoutMs);
      this.events.once(event, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
