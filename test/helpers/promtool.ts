/**
 * promtool (Debian's `prometheus` package) for the tests that lint metrics and
 * exercise alert rules. scripts/bootstrap.sh installs it; a test run as root
 * with apt-get installs it too. `skip` is set only when it is truly missing.
 */
import { execFileSync, spawnSync } from 'node:child_process';

function onPath(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

function findOrInstall(): string | undefined {
  if (onPath('promtool')) return undefined;
  if (process.getuid?.() === 0 && onPath('apt-get')) {
    try {
      execFileSync('apt-get', ['install', '-y', '-qq', 'prometheus'], {
        stdio: 'ignore',
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
        timeout: 300_000,
      });
    } catch {
      // falls through to the skip reason below
    }
    if (onPath('promtool')) return undefined;
  }
  return 'promtool not found and not installable here: install Debian\'s "prometheus" package (scripts/bootstrap.sh does as root)';
}

/** Why promtool tests must skip, or undefined when promtool is ready. */
export const promtoolMissing = findOrInstall();

/** Runs promtool; resolves its exit status and combined output. */
export function promtool(args: readonly string[], input?: string): { status: number | null; output: string } {
  const run = spawnSync('promtool', args, { input, encoding: 'utf8', timeout: 60_000 });
  return { status: run.status, output: `${run.stdout ?? ''}${run.stderr ?? ''}` };
}
