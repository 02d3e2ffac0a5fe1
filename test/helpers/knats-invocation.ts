/**
 * The real CLI's validation of one knats command line.
 */
import type { NatsSettings } from '../../broker/bus/connection.js';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { brokerFlags } from '../../cli/broker-command.js';
import { agentConfig, frontendConfig, natsSettings } from '../../cli/config.js';
import { dialFlags } from '../../cli/dial-command.js';
import { FlagReader, type FlagSpec, parseFlags } from '../../cli/flags.js';
import { statusFlags } from '../../cli/status-command.js';
import type { Env, Problems } from './deploy-repo.js';

export type FrontendSettings = ReturnType<typeof frontendConfig>['config'];
type AgentSettings = ReturnType<typeof agentConfig>['config'];

interface Invocation {
  readonly where: string;
  /** After `knats`: the command, then its flags. */
  readonly argv: readonly string[];
  readonly env: Env;
}

export type Checked =
  | { kind: 'frontend'; inv: Invocation; config: FrontendSettings }
  | { kind: 'agent'; inv: Invocation; config: AgentSettings }
  | { kind: 'dial'; inv: Invocation; flags: FlagReader; address: string }
  | { kind: 'status'; inv: Invocation; nats: NatsSettings }
  | { kind: 'other'; inv: Invocation };

function badConfig(message: string): KnatsError {
  return new KnatsError(ErrorCode.BadConfig, message);
}

function readFlags(specs: readonly FlagSpec[], argv: readonly string[], env: Env): FlagReader {
  return new FlagReader(specs, parseFlags(specs, argv, env));
}

/** Runs one command line through the CLI's parsing and validation; throws what `knats` would print. */
function validateInvocation(inv: Invocation): Checked {
  const [command = '', ...rest] = inv.argv;
  const help = rest.includes('--help') || rest.includes('-h');
  switch (command) {
    case 'frontend':
      if (help) return { kind: 'other', inv };
      return { kind: 'frontend', inv, config: frontendConfig(rest, inv.env).config };
    case 'agent':
      if (help) return { kind: 'other', inv };
      return { kind: 'agent', inv, config: agentConfig(rest, inv.env).config };
    case 'dial': {
      if (help) return { kind: 'other', inv };
      // The flags through the CLI's own spec; the few rules runDial adds, mirrored.
      const flags = readFlags(dialFlags, rest, inv.env);
      const [address, ...extra] = flags.positionals;
      if (!address || extra.length)
        throw badConfig('usage: knats dial (--uds-name PATH | --server-address HOST:PORT) HOST:PORT');
      if (!flags.string('uds-name') === !flags.string('server-address'))
        throw badConfig('--uds-name or --server-address: exactly one is required');
      if (
        flags.string('server-address') &&
        !(flags.has('ca-cert') && flags.has('client-cert') && flags.has('client-key'))
      )
        throw badConfig('--ca-cert, --client-cert and --client-key: required with --server-address');
      return { kind: 'dial', inv, flags, address };
    }
    case 'status': {
      if (help) return { kind: 'other', inv };
      const flags = readFlags(statusFlags, rest, inv.env);
      if (flags.positionals.length)
        throw badConfig(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
      return { kind: 'status', inv, nats: natsSettings(flags) };
    }
    case 'broker': {
      const flags = readFlags(
        brokerFlags,
        rest.filter((a) => a !== '--help' && a !== '-h'),
        inv.env,
      );
      if (flags.positionals.length)
        throw badConfig(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
      return { kind: 'other', inv };
    }
    case 'demo':
    case 'version':
    case '--version':
    case 'help':
    case '--help':
    case '-h':
      if (rest.length && !help) throw badConfig(`unexpected argument ${JSON.stringify(rest[0])}`);
      return { kind: 'other', inv };
    default:
      throw badConfig(`unknown command ${JSON.stringify(command)}`);
  }
}

export function checkInvocation(inv: Invocation, problems: Problems): Checked | undefined {
  try {
    return validateInvocation(inv);
  } catch (err) {
    const code = (err as { code?: string }).code;
    const why = code === ErrorCode.BadConfig ? '' : ` (${code ?? 'unexpected error'})`;
    problems.add(
      inv.where,
      `\`knats ${inv.argv.join(' ')}\` is refused by the CLI${why}: ${(err as Error).message}`,
    );
    return undefined;
  }
}

/** File paths a command reads (or, for a frontend's socket, creates). */
export function filesOf(checked: Checked): { flag: string; path: string }[] {
  const files: { flag: string; path: string | undefined }[] = [];
  const nats = (n: NatsSettings) => {
    files.push(
      { flag: 'nats-creds', path: n.credsFile },
      { flag: 'nats-nkey', path: n.nkeyFile },
      { flag: 'nats-tls-ca', path: n.tlsCaFile },
      { flag: 'nats-tls-cert', path: n.tlsCertFile },
      { flag: 'nats-tls-key', path: n.tlsKeyFile },
    );
  };
  switch (checked.kind) {
    case 'frontend':
      nats(checked.config.nats);
      files.push(
        { flag: 'uds-name', path: checked.config.udsName },
        { flag: 'server-cert', path: checked.config.serverCert },
        { flag: 'server-key', path: checked.config.serverKey },
        { flag: 'server-ca-cert', path: checked.config.serverCaCert },
      );
      break;
    case 'agent':
      nats(checked.config.nats);
      break;
    case 'status':
      nats(checked.nats);
      break;
    case 'dial':
      for (const flag of ['uds-name', 'ca-cert', 'client-cert', 'client-key'])
        files.push({ flag, path: checked.flags.string(flag) });
      break;
    case 'other':
      break;
  }
  return files.filter((f): f is { flag: string; path: string } => f.path !== undefined);
}

export function natsOf(checked: Checked): NatsSettings | undefined {
  if (checked.kind === 'frontend' || checked.kind === 'agent') return checked.config.nats;
  if (checked.kind === 'status') return checked.nats;
  return undefined;
}

export function natsUrl(server: string): { host: string; port: number } | undefined {
  const m = /^(?:(?:nats|tls):\/\/)?(?:[^@/]*@)?([^:/]+):(\d+)$/.exec(server);
  return m ? { host: m[1]!, port: Number(m[2]) } : undefined;
}

export const isLoopback = (address: string) => ['127.0.0.1', 'localhost', '::1'].includes(address);
export const isAnyAddress = (address: string) => ['', '0.0.0.0', '::'].includes(address);
