#!/usr/bin/env node
/**
 * knats: one executable for every role. Parses flags into a typed config
 * and starts a component. Every failure is one line on stderr, never a stack
 * trace: exit 2 for a configuration error (the line names the flag and its
 * value), 1 for a runtime error.
 */
import cluster from 'node:cluster';
import { format } from 'node:util';
import { setLogger as setGrpcLogger } from '@grpc/grpc-js';
import { startAgent } from './agent/agent.js';
import { ErrorCode, isKnatsError } from './broker/errors.js';
import { createLogger, type Logger } from './broker/logging.js';
import { redactUserinfo } from './broker/redact.js';
import { VERSION } from './broker/version.js';
import { brokerHelp, runBroker } from './cli/broker-command.js';
import { agentConfig, agentFlags, frontendConfig, frontendFlags } from './cli/config.js';
import { runDemo } from './cli/demo-command.js';
import { dialFlags, runDial } from './cli/dial-command.js';
import { helpText } from './cli/flags.js';
import { stopOnSignals } from './cli/run-component.js';
import { runStatus, statusFlags } from './cli/status-command.js';
import { startFrontend } from './frontend/frontend.js';
import { runFrontendWorker, startFrontendWorkers, WORKER_INDEX_ENV } from './frontend/workers.js';

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

/**
 * grpc-js writes its own view of failures to stderr (`E No address added
 * out of total 1 resolved`); our errors already name the cause and the flag,
 * so its lines go to the process log at debug level, or nowhere.
 */
function routeGrpcLogs(logger?: Logger): void {
  const sink = (...args: unknown[]) => logger?.debug({ grpc: format(...args) }, 'grpc-js');
  setGrpcLogger({ error: sink, info: sink, debug: sink });
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  routeGrpcLogs();
  if (!command) {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
  if (command === '--help' || command === '-h' || command === 'help') {
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
      const { config, logging, warnings, workers } = frontendConfig(rest, env);
      const logger = createLogger({ name: 'frontend', output: logging });
      routeGrpcLogs(logger);
      // A worker of --workers N (forked by the primary below with the same command line).
      if (cluster.isWorker) return runFrontendWorker({ ...config, logger }, Number(env[WORKER_INDEX_ENV]));
      for (const warning of warnings) logger.warn(warning, 'upstream flag has no effect here');
      const frontend =
        workers > 1
          ? await startFrontendWorkers({ ...config, logger }, workers)
          : await startFrontend({ ...config, logger });
      stopOnSignals(frontend, logger);
      return;
    }
    case 'agent': {
      const { config, logging, warnings } = agentConfig(rest, env);
      const logger = createLogger({ name: 'agent', output: logging });
      for (const warning of warnings) logger.warn(warning, 'upstream flag has no effect here');
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

/** One line, no stack, no secrets; exit 2 for configuration errors, 1 for everything else. */
function fail(err: unknown): never {
  const command = process.argv[2] ?? '';
  const message = redactUserinfo(err instanceof Error ? err.message : String(err));
  const code = isKnatsError(err) ? err.code : undefined;
  const tag = code && code !== ErrorCode.BadConfig && !message.includes(code) ? ` [${code}]` : '';
  process.stderr.write(`knats ${command}: ${message}${tag}\n`);
  process.exit(code === ErrorCode.BadConfig ? 2 : 1);
}

// A bug must not print a stack trace either: the same one line, exit 1.
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);
main(process.argv.slice(2)).catch(fail);
