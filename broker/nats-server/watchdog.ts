/**
 * Cleanup that outlives this process, however it dies (SIGKILL and OOM kill
 * included): a tiny `sh` child whose stdin is a pipe only this process holds.
 * When this process dies the kernel closes the pipe, `read` sees end of
 * file, and the watchdog kills the given processes and removes the given
 * folders. A normal stop releases it instead (a newline: `read` succeeds
 * and the watchdog exits without acting).
 *
 * Why a pipe: Node has no prctl(PR_SET_PDEATHSIG), exit hooks do not run on
 * SIGKILL, and polling the parent's pid can be fooled by pid reuse; the
 * closing of a pipe is the one notice of our death the kernel guarantees.
 */
import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';

const SCRIPT = `
if read -r _; then exit 0; fi
for pid in $KNATS_WATCHDOG_PIDS; do kill -KILL "$pid" 2>/dev/null; done
for dir in "$@"; do rm -rf -- "$dir"; done
`;

export interface Watchdog {
  /** The work was done normally: the watchdog exits without acting. Idempotent. */
  release(): void;
}

export function watchOnDeath(pids: readonly number[], dirs: readonly string[]): Watchdog {
  const child = spawn('/bin/sh', ['-c', SCRIPT, 'knats-watchdog', ...dirs], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', KNATS_WATCHDOG_PIDS: pids.join(' ') },
    // Its own process group: a terminal's Ctrl-C reaches us (who then release it), not the watchdog.
    detached: true,
  });
  child.on('error', () => {
    // no /bin/sh: cleanup on exit hooks only, as before
  });
  const stdin = child.stdin!;
  stdin.on('error', () => {
    // the watchdog is gone already
  });
  // Neither the watchdog nor its pipe keeps the event loop alive.
  child.unref();
  (stdin as unknown as Socket).unref?.();
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      stdin.end('\n');
    },
  };
}
