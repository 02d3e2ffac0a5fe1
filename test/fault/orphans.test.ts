/**
 * No orphans from the launchers: `knats broker` and `knats demo` killed with
 * SIGKILL leave neither their nats-server nor their temporary folders behind.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { cliPath, eventually } from '../helpers/fleet.js';

/** Children of `pid` running `command`, from /proc. */
function childrenNamed(pid: number, command: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // pid (comm) state ppid ...
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const ppid = Number(stat.slice(close + 2).split(' ')[1]);
      if (ppid === pid && comm === command) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** Alive, and not a zombie waiting for its new parent to reap it. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** The folder of the config file nats-server was started with (`-c FILE`). */
function configDirOf(pid: number): string {
  const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  return dirname(args[args.indexOf('-c') + 1]!);
}

/** Starts `knats ...args` and resolves once its stdout matched `ready`. */
async function launch(args: string[], ready: RegExp): Promise<{ child: ChildProcess; stdout: string }> {
  const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  let stdout = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`knats ${args[0]} not ready:\n${stdout}`)), 20_000);
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (ready.test(stdout)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`knats ${args[0]} exited with ${code}:\n${stdout}`)));
  });
  return { child, stdout };
}

describe('no orphans from the launchers', () => {
  const dir = mkdtempSync(join(tmpdir(), 'knats-orphans-'));
  const leftovers: number[] = [];
  after(() => {
    for (const pid of leftovers) if (alive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  async function assertGoneAfterKill(child: ChildProcess, folders: string[]): Promise<void> {
    const [nats] = childrenNamed(child.pid!, 'nats-server');
    assert.ok(nats, 'the launcher runs a nats-server child');
    leftovers.push(nats);
    const natsFolder = configDirOf(nats);
    for (const folder of [natsFolder, ...folders])
      assert.ok(existsSync(folder), `${folder} exists while running`);
    child.kill('SIGKILL');
    const killedAt = Date.now();
    await eventually(() => !alive(nats), 'nats-server gone', 5000);
    for (const folder of [natsFolder, ...folders]) {
      await eventually(() => !existsSync(folder), `${folder} removed`, 5000);
    }
    assert.ok(Date.now() - killedAt <= 5000);
  }

  it('knats broker killed with SIGKILL: its nats-server and temp folder go within seconds', async () => {
    const { child } = await launch(
      ['broker', '--port', '0', '--state-dir', join(dir, 'state')],
      /^nats:\/\/127\.0\.0\.1:\d+\n/,
    );
    await assertGoneAfterKill(child, []);
  });

  it('knats demo killed with SIGKILL: its nats-server, its socket folder and the nats temp folder go', async () => {
    const { child, stdout } = await launch(['demo'], /Stop with Ctrl-C/);
    const socket = /unix:(\S+)/.exec(stdout)?.[1];
    assert.ok(socket, stdout);
    await assertGoneAfterKill(child, [dirname(socket)]);
  });
});
