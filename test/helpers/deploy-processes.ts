/** What the deploy tests on a real nats-server run: the built CLI, a tunnel through a frontend, and checks for the programs they need. */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { findNatsServer } from '../../broker/nats-server/local-server.js';
import type { Env } from './deploy-repo.js';
import type { Destination } from './destinations.js';
import { cliPath } from './fleet.js';
import { ProxyStreamClient } from './proxy-client.js';

export function commandMissing(...commands: string[]): string | false {
  for (const command of commands) {
    try {
      execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    } catch {
      return `${command} is not installed`;
    }
  }
  return false;
}

/** `knats ARGS < input`, the built CLI as a child process with a service's environment. */
export function runCli(
  args: readonly string[],
  input: string,
  env: Env,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // Only the service's environment: KNATS_* of the host must not leak in.
    const child = spawn(process.execPath, [cliPath, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(input);
  });
}

/** GET /PATH from the web destination through the gRPC frontend on `uds`. */
export async function getThroughSocket(uds: string, web: Destination, path: string): Promise<void> {
  const client = new ProxyStreamClient(`unix:${uds}`);
  try {
    const dial = await client.dial(web.address);
    assert.equal(dial.error, '', `dial for /${path}`);
    client.send(dial.connectID, Buffer.from(`GET /${path} HTTP/1.0\r\n\r\n`));
    await client.waitClosed(dial.connectID);
    assert.match(client.dataOf(dial.connectID).toString(), new RegExp(`web /${path}$`));
  } finally {
    client.close();
  }
}

export function natsServerMissing(): string | false {
  try {
    findNatsServer();
    return false;
  } catch {
    return 'nats-server is not installed';
  }
}
