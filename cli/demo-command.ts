/**
 * `knats demo`: a local nats-server, one frontend on a Unix socket, one agent
 * and a small HTTP destination, in one process tree. Prints what to try.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startAgent } from '../agent/agent.js';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { createLogger } from '../broker/logging.js';
import { startLocalServer } from '../broker/nats-server/local-server.js';
import { watchOnDeath } from '../broker/nats-server/watchdog.js';
import { startFrontend } from '../frontend/frontend.js';
import { agentConfig, frontendConfig } from './config.js';
import { stopOnSignals } from './run-component.js';

export async function runDemo(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  if (argv.length)
    throw new KnatsError(ErrorCode.BadConfig, `knats demo takes no arguments (got ${argv[0]})`);
  const logger = createLogger({
    name: 'demo',
    level: env.KNATS_LOG_LEVEL === undefined ? 'warn' : (env.KNATS_LOG_LEVEL as 'info'),
  });
  const dir = mkdtempSync(join(tmpdir(), 'knats-demo-'));
  // The socket folder goes even if the demo is killed (its nats-server has its own watchdog).
  const watchdog = watchOnDeath([], [dir]);
  const nats = await startLocalServer({ logger, keepAlive: true });
  const destination = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(
      `Hello from the cluster network! You asked for ${req.method} ${req.url}, and it came through the tunnel.\n`,
    );
  });
  await new Promise<void>((resolve) => destination.listen(0, '127.0.0.1', resolve));
  const destinationPort = (destination.address() as AddressInfo).port;
  const socket = join(dir, 'konnectivity-server.socket');
  const common = ['--nats-url', nats.url];
  const fe = frontendConfig(
    [
      ...common,
      '--uds-name',
      socket,
      '--health-port',
      '0',
      '--admin-port',
      '0',
      '--server-id',
      'demo-frontend',
    ],
    {},
  );
  const frontend = await startFrontend({ ...fe.config, logger });
  const ag = agentConfig(
    [
      ...common,
      '--agent-id',
      'demo-agent',
      '--health-server-port',
      '0',
      '--admin-server-port',
      '0',
      // Loopback is denied by default: the demo destination is opened by its exact address and port.
      '--allow-destinations',
      `*,127.0.0.1:${destinationPort}`,
    ],
    {},
  );
  const agent = await startAgent({ ...ag.config, logger });
  const cli = fileURLToPath(new URL('../cli.js', import.meta.url));
  process.stdout.write(
    [
      'knats demo is running:',
      `  NATS server   ${nats.url}`,
      `  frontend      gRPC ProxyService on unix:${socket}  (health http://127.0.0.1:${frontend.healthPort}/readyz)`,
      `  agent         ${agent.id}  (health http://127.0.0.1:${agent.healthPort}/metrics)`,
      `  destination   http://127.0.0.1:${destinationPort}/`,
      '',
      'Fetch a page through the tunnel (frontend -> NATS -> agent -> destination), in another terminal:',
      '',
      `  printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' | node ${cli} dial --uds-name ${socket} 127.0.0.1:${destinationPort}`,
      '',
      `See the fleet:  node ${cli} status --nats-url ${nats.url}`,
      'Stop with Ctrl-C.',
      '',
    ].join('\n'),
  );
  stopOnSignals(
    {
      async stop() {
        await frontend.stop({ immediate: true });
        await agent.stop({ immediate: true });
        destination.close();
        await nats.stop();
        rmSync(dir, { recursive: true, force: true });
        watchdog.release();
      },
    },
    logger,
  );
}
