#!/usr/bin/env node
/**
 * knats: one executable for every role. Parses flags into a typed config
 * and starts a component; bad flags print one line naming the flag and exit 2.
 */
import { startAgent } from './agent/agent.js';
import { isKnatsError } from './broker/errors.js';
import { createLogger } from './broker/logging.js';
import { VERSION } from './broker/version.js';
import { brokerHelp, runBroker } from './cli/broker-command.js';
import { agentConfig, agentFlags, frontendConfig, frontendFlags } from './cli/config.js';
import { runDemo } from './cli/demo-command.js';
import { dialFlags, runDial } from './cli/dial-command.js';
import { helpText } from './cli/flags.js';
import { stopOnSignals } from './cli/run-component.js';
import { runStatus, statusFlags } from './cli/status-command.js';
import { startFrontend } from './frontend/frontend.js';

const USAGE = `knats ${VERSION}: a Konnectivity-compatible egress proxy brokered over NATS

usage: knats <command> [flags]

commands:
  frontend   accept kube-apiserver's dials (gRPC ProxyService or HTTP CONNECT) and tunnel them over NATS
  agent      run in the cluster: answer dials from NATS and bridge them to TCP destinations
  broker     local nats-server with per-role nkey auth; 'broker config' prints a production nats-server configuration
  demo       broker + frontend + agent + a demo destination in one process tree
  dial       test client: dial HOST:PORT through a frontend and pipe stdio
  status     the fleet as seen on the bus
  version    print the version

Run 'knats <command> --help' for the flags of a command.`;

const HELP: Record<string, () => string> = {
  frontend: () =>
    helpText('frontend', '--nats-url URL (--uds-name PATH | --server-port N ...)', frontendFlags),
  agent: () => helpText('agent', '--nats-url URL [flags]', agentFlags),
  broker: () => brokerHelp(process.argv.slice(3)),
  dial: () => helpText('dial', '(--uds-name PATH | --server-address HOST:PORT) HOST:PORT', dialFlags),
  status: () => helpText('status', '--nats-url URL [--json]', statusFlags),
  demo: () => 'usage: knats demo',
};

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (command === 'version' || command === '--version') {
    process.stdout.write(`${VERSION}\n`);
    return;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    const help = HELP[command];
    if (help) {
      process.stdout.write(`${help()}\n`);
      return;
    }
  }
  const env = process.env;
  switch (command) {
    case 'frontend': {
      const { config, level } = frontendConfig(rest, env);
      const logger = createLogger({ name: 'frontend', level });
      const frontend = await startFrontend({ ...config, logger });
      stopOnSignals(frontend, logger);
      return;
    }
    case 'agent': {
      const { config, level } = agentConfig(rest, env);
      const logger = createLogger({ name: 'agent', level });
      const agent = await startAgent({ ...config, logger });
      stopOnSignals(agent, logger);
      return;
    }
    case 'broker':
      return runBroker(rest, env);
    case 'demo':
      return runDemo(rest, env);
    case 'dial':
      return runDial(rest, env);
    case 'status':
      return runStatus(rest, env);
    default:
      process.stderr.write(`knats: unknown command ${JSON.stringify(command)}\n${USAGE}\n`);
      process.exit(2);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const command = process.argv[2] ?? '';
  if (isKnatsError(err) && err.code === 'KNATS_BAD_CONFIG') {
    process.stderr.write(`knats ${command}: ${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`knats ${command}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
