/**
 * `knats broker`: a local nats-server (or a cluster of them) for development.
 */

import { startLocalCluster, startLocalServer } from '../broker/local-server.js';
import { createLogger } from '../broker/logging.js';
import { FlagReader, type FlagSpec, parseFlags } from './flags.js';
import { stopOnSignals } from './run-component.js';

export const brokerFlags: FlagSpec[] = [
  { name: 'host', kind: 'string', default: '127.0.0.1', help: 'listen address', placeholder: 'ADDR' },
  { name: 'port', kind: 'int', default: 4222, help: 'client port (0: pick one)', placeholder: 'N' },
  {
    name: 'cluster',
    kind: 'int',
    default: 1,
    help: 'number of nats-servers joined by routes',
    placeholder: 'N',
  },
];

export async function runBroker(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const flags = new FlagReader(brokerFlags, parseFlags(brokerFlags, argv, env));
  const logger = createLogger({ name: 'broker' });
  const size = flags.int('cluster');
  if (size < 1 || size > 9) throw new Error('--cluster: between 1 and 9');
  const host = flags.string('host') ?? '127.0.0.1';
  const servers =
    size === 1
      ? [await startLocalServer({ host, port: flags.port('port'), logger, keepAlive: true })]
      : await startLocalCluster(size, { host, logger, keepAlive: true });
  process.stdout.write(`${servers.map((s) => s.url).join(',')}\n`);
  stopOnSignals({ stop: async () => void (await Promise.all(servers.map((s) => s.stop()))) }, logger);
}
