/**
 * `knats broker`: a local nats-server (or a cluster of them) for development,
 * with per-role authentication on by default.
 * `knats broker config`: a production nats-server configuration with
 * least-privilege permissions per role, see broker/nats-server/nats-auth.ts.
 */

import path from 'node:path';
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { createLogger } from '../broker/logging.js';
import { startLocalCluster, startLocalServer } from '../broker/nats-server/local-server.js';
import {
  type AuthUser,
  assertUserNkey,
  ensureRoleCredential,
  frontendWorkerId,
  MAX_FRONTEND_WORKERS,
  natsAuthConfig,
  type PrefixAuth,
  type Role,
  type RoleCredential,
} from '../broker/nats-server/nats-auth.js';
import { parseAgentIdentifiers } from '../broker/wire/identifiers.js';
import { assertToken, idOfToken, idToken } from '../broker/wire/subjects.js';
import { FlagReader, type FlagSpec, helpText, parseFlags } from './flags.js';
import { stopOnSignals } from './run-component.js';

const DEFAULT_STATE_DIR = './.knats-state';

const stateDirFlag: FlagSpec = {
  name: 'state-dir',
  kind: 'string',
  default: DEFAULT_STATE_DIR,
  help: 'folder of the generated nkey seeds, <dir>/<prefix>/<role>.nk (mode 0600); existing seeds are reused',
  placeholder: 'DIR',
};

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
  {
    name: 'subject-prefix',
    kind: 'string',
    default: 'knats',
    help: 'subject prefix(es) the generated credentials are for, comma-separated (one account each)',
    placeholder: 'P[,P...]',
  },
  stateDirFlag,
  {
    name: 'no-auth',
    kind: 'bool',
    default: false,
    help: 'no authentication: anyone reaching the port may use every subject (quick experiments only)',
  },
];

export const brokerConfigFlags: FlagSpec[] = [
  {
    name: 'prefix',
    kind: 'string',
    default: 'knats',
    help: 'subject prefix(es), comma-separated; each gets its own NATS account and users',
    placeholder: 'P[,P...]',
  },
  {
    name: 'agent',
    kind: 'string',
    help:
      'one user per agent id, restricted to its own frame and direct-dial subjects (repeatable or ' +
      'comma-separated; ID=UPUBKEY uses an existing public nkey). Replaces the shared agent user, ' +
      'so every agent then needs its own (--agent-id ID). ?IDENTIFIERS grants the identifiers the ' +
      "agent may claim, e.g. 'agA?host=a.example&cidr=10.0.0.0/8' (it must run with exactly these " +
      '--agent-identifiers; without a grant it may claim any, or none with --require-grants)',
    placeholder: 'ID[=NKEY][?IDENTIFIERS]',
  },
  {
    name: 'require-grants',
    kind: 'bool',
    default: false,
    help:
      'agents without an identifier grant (an --agent ID without ?IDENTIFIERS, or the shared agent user) ' +
      'may claim no identifiers: they take default dials only, so destHost and default-route dials go ' +
      'only to agents granted them',
  },
  {
    name: 'frontend',
    kind: 'string',
    help:
      'one user per frontend id (run it with --server-id ID), restricted to its own frame subjects ' +
      '(repeatable or comma-separated; ID=UPUBKEY uses an existing key). Replaces the shared frontend user',
    placeholder: 'ID[=NKEY]',
  },
  {
    name: 'frontend-workers',
    kind: 'int',
    default: 0,
    help:
      'each --frontend ID user may also be the workers ID-w1 .. ID-wN of a frontend run with ' +
      '--server-id ID --workers N (0: only ID)',
    placeholder: 'N',
  },
  {
    name: 'frontend-nkey',
    kind: 'string',
    help: 'public nkey(s) of the shared frontend user instead of a generated one (single prefix only)',
    placeholder: 'UKEY[,...]',
  },
  {
    name: 'agent-nkey',
    kind: 'string',
    help: 'public nkey(s) of the shared agent user instead of a generated one (single prefix only)',
    placeholder: 'UKEY[,...]',
  },
  {
    name: 'status-nkey',
    kind: 'string',
    help: 'public nkey(s) of the status user instead of a generated one (single prefix only)',
    placeholder: 'UKEY[,...]',
  },
  stateDirFlag,
];

const REPEATABLE = new Set(['agent', 'frontend', 'frontend-nkey', 'agent-nkey', 'status-nkey']);

/** Help for `knats broker` and `knats broker config`. */
export function brokerHelp(argv: readonly string[]): string {
  if (argv[0] === 'config') {
    return [
      helpText(
        'broker config',
        '[--prefix P[,P...]] [--agent ID ...] [flags] > nats-server.conf',
        brokerConfigFlags,
      ),
      '',
      'Prints a nats-server configuration (accounts block) to stdout; generated seeds go to --state-dir.',
    ].join('\n');
  }
  return [
    helpText('broker', '[flags]   |   knats broker config --help', brokerFlags),
    '',
    'Starts nats-server with one nkey user per role (frontend, agent, status) and prints its URL',
    'and how to pass each role its seed; --no-auth turns authentication off.',
  ].join('\n');
}

/** `--agent a --agent b=U...` -> one `--agent a,b=U...`, so repeatable flags fit the flag parser. */
export function mergeRepeated(argv: readonly string[], repeatable: ReadonlySet<string>): string[] {
  const out: string[] = [];
  const merged = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const match = /^--?([a-z-]+)(=(.*))?$/.exec(arg);
    const name = match?.[1];
    if (!match || name === undefined || !repeatable.has(name)) {
      out.push(arg);
      continue;
    }
    let value = match[3];
    if (value === undefined) {
      value = argv[i + 1];
      if (value === undefined) throw new KnatsError(ErrorCode.BadConfig, `--${name}: missing value`);
      i++;
    }
    const values = merged.get(name) ?? [];
    values.push(value);
    merged.set(name, values);
  }
  for (const [name, values] of merged) out.push(`--${name}=${values.join(',')}`);
  return out;
}

function bad(message: string): KnatsError {
  return new KnatsError(ErrorCode.BadConfig, message);
}

function listOf(flags: FlagReader, name: string): string[] {
  return (flags.string(name) ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function prefixesOf(flags: FlagReader, name: string): string[] {
  const prefixes = listOf(flags, name);
  if (prefixes.length === 0) throw bad(`--${name}: at least one prefix`);
  for (const prefix of prefixes) {
    try {
      assertToken(prefix, `--${name}`);
    } catch (err) {
      throw bad((err as Error).message);
    }
  }
  if (new Set(prefixes).size !== prefixes.length) throw bad(`--${name}: a prefix is listed twice`);
  return prefixes;
}

interface ProcessUser {
  readonly id: string;
  readonly nkey?: string;
  /** Identifiers granted to an agent (`?host=...`). */
  readonly grant?: string;
}

/** `ID`, `ID=UKEY`, and for agents `ID[=UKEY]?IDENTIFIERS`. */
function idsOf(flags: FlagReader, name: string): ProcessUser[] {
  const seen = new Set<string>();
  return listOf(flags, name).map((item) => {
    const question = item.indexOf('?');
    const grant = question >= 0 ? item.slice(question + 1) : undefined;
    const user = question >= 0 ? item.slice(0, question) : item;
    const eq = user.indexOf('=');
    const id = idToken(eq >= 0 ? user.slice(0, eq) : user);
    try {
      assertToken(id, `--${name}`);
      if (grant !== undefined) {
        if (name !== 'agent') throw bad(`--${name} ${id}: identifiers can be granted to agents only`);
        parseAgentIdentifiers(grant);
      }
    } catch (err) {
      throw bad(`--${name} ${id}: ${(err as Error).message}`);
    }
    if (seen.has(id)) throw bad(`--${name}: ${id} is listed twice`);
    seen.add(id);
    return {
      id,
      ...(eq >= 0 ? { nkey: assertUserNkey(user.slice(eq + 1), `--${name} ${id}`) } : {}),
      ...(grant !== undefined ? { grant } : {}),
    };
  });
}

/** `word` as one shell word: quoted unless it is plain. */
function shellWord(word: string): string {
  return /^[A-Za-z0-9_.,:@%+=/-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

function relative(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel.startsWith('..') ? file : rel;
}

/** Shell lines telling how to run each role with its credentials (and an agent with its granted identifiers). */
function usageLines(
  url: string,
  credentials: readonly RoleCredential[],
  grants: ReadonlyMap<string, string> = new Map(),
  frontendWorkers = 0,
): string[] {
  const commands: Record<Role, string> = {
    frontend: 'frontend --uds-name /path/konnectivity-server.socket',
    agent: 'agent',
    status: 'status',
  };
  return credentials.map((c) => {
    const extra: string[] = [];
    if (c.prefix !== 'knats') extra.push(`--subject-prefix ${c.prefix}`);
    // The id as given: the process writes it as the same token itself.
    const id = c.id === undefined ? undefined : shellWord(idOfToken(c.id));
    if (id !== undefined) extra.push(c.role === 'agent' ? `--agent-id ${id}` : `--server-id ${id}`);
    const grant = c.role === 'agent' && c.id !== undefined ? grants.get(c.id) : undefined;
    if (grant !== undefined) extra.push(`--agent-identifiers '${grant}'`);
    if (c.role === 'frontend' && c.id !== undefined && frontendWorkers > 0)
      extra.push(`--workers ${frontendWorkers}`);
    const label = [c.prefix === 'knats' ? '' : c.prefix, c.role, c.id ?? ''].filter(Boolean).join(' ');
    const command = `knats ${commands[c.role]} --nats-url ${url} --nats-nkey ${relative(c.seedFile)}`;
    return `#   ${`${label}:`.padEnd(20)} ${command}${extra.length ? ` ${extra.join(' ')}` : ''}`;
  });
}

export async function runBroker(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  if (argv[0] === 'config') return runBrokerConfig(argv.slice(1), env);
  const flags = new FlagReader(brokerFlags, parseFlags(brokerFlags, argv, env));
  if (flags.positionals.length) throw bad(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
  const size = flags.int('cluster');
  if (size < 1 || size > 9) throw bad('--cluster: between 1 and 9');
  const host = flags.string('host') ?? '127.0.0.1';
  const port = flags.port('port');
  const noAuth = flags.bool('no-auth');
  const stateDir = path.resolve(flags.string('state-dir') ?? DEFAULT_STATE_DIR);
  const prefixes = prefixesOf(flags, 'subject-prefix');
  const logger = createLogger({ name: 'broker' });

  const credentials: RoleCredential[] = [];
  let extraConfig: string | undefined;
  if (!noAuth) {
    const auth: PrefixAuth[] = [];
    for (const prefix of prefixes) {
      const users: AuthUser[] = [];
      for (const role of ['frontend', 'agent', 'status'] as const) {
        const credential = await ensureRoleCredential(stateDir, prefix, role);
        credentials.push(credential);
        users.push({ role, nkey: credential.publicKey, comment: relative(credential.seedFile) });
      }
      auth.push({ prefix, users });
    }
    extraConfig = natsAuthConfig(auth);
  }
  const servers =
    size === 1
      ? [await startLocalServer({ host, port, logger, keepAlive: true, extraConfig })]
      : await startLocalCluster(size, { host, logger, keepAlive: true, extraConfig });
  const url = servers.map((s) => s.url).join(',');
  const lines = [url];
  if (noAuth) {
    lines.push('# authentication OFF (--no-auth): anyone reaching the port may use every subject');
  } else {
    const fresh = credentials.some((c) => c.created) ? 'created now' : 'reused';
    lines.push(
      `# authentication on: one nkey user per role, seeds in ${relative(stateDir)} (${fresh}, mode 0600); run`,
      ...usageLines(url, credentials),
      '# (--no-auth starts nats-server without authentication; `knats broker config` prints the production configuration)',
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  stopOnSignals({ stop: async () => void (await Promise.all(servers.map((s) => s.stop()))) }, logger);
}

/**
 * `knats broker config`: prints the accounts block to stdout and, on stderr,
 * which seed each role uses. Generated seeds land in --state-dir; roles given
 * as public keys get no seed.
 */
export async function runBrokerConfig(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const text = await brokerConfig(argv, env);
  process.stdout.write(text.config);
  process.stderr.write(`${text.notes.join('\n')}\n`);
}

export async function brokerConfig(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ config: string; notes: string[]; credentials: RoleCredential[] }> {
  const flags = new FlagReader(
    brokerConfigFlags,
    parseFlags(brokerConfigFlags, mergeRepeated(argv, REPEATABLE), env),
  );
  if (flags.positionals.length) throw bad(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
  const prefixes = prefixesOf(flags, 'prefix');
  const stateDir = path.resolve(flags.string('state-dir') ?? DEFAULT_STATE_DIR);
  // With --require-grants an agent without a grant is granted no identifiers (the empty set).
  const ungranted = flags.bool('require-grants') ? '' : undefined;
  const agents = idsOf(flags, 'agent').map((agent) =>
    agent.grant === undefined && ungranted !== undefined ? { ...agent, grant: ungranted } : agent,
  );
  const frontends = idsOf(flags, 'frontend');
  const frontendWorkers = flags.int('frontend-workers');
  if (frontendWorkers < 0 || frontendWorkers > MAX_FRONTEND_WORKERS) {
    throw bad(`--frontend-workers: between 0 and ${MAX_FRONTEND_WORKERS}`);
  }
  if (frontendWorkers > 0 && frontends.length === 0) {
    throw bad('--frontend-workers: applies to per-frontend users; give them with --frontend ID');
  }
  // Two users granted one bus id would read each other's frames and dial replies.
  const frontendIds = new Set(frontends.map((f) => f.id));
  for (const { id } of frontends) {
    for (let k = 1; k <= frontendWorkers; k++) {
      const worker = frontendWorkerId(id, k);
      if (frontendIds.has(worker)) {
        throw bad(
          `--frontend ${worker}: is also the id of worker ${k} of --frontend ${id} (--frontend-workers)`,
        );
      }
    }
  }
  const keys = (name: string) => listOf(flags, name).map((k) => assertUserNkey(k, `--${name}`));
  const sharedKeys: Record<Role, string[]> = {
    frontend: keys('frontend-nkey'),
    agent: keys('agent-nkey'),
    status: keys('status-nkey'),
  };
  const explicit =
    Object.values(sharedKeys).some((k) => k.length > 0) || [...agents, ...frontends].some((a) => a.nkey);
  if (explicit && prefixes.length > 1) {
    throw bad('--prefix: public nkeys can be given for one prefix at a time (run once per prefix)');
  }

  const credentials: RoleCredential[] = [];
  const auth: PrefixAuth[] = [];
  for (const prefix of prefixes) {
    const users: AuthUser[] = [];
    const add = async (role: Role, { id, nkey, grant }: Partial<ProcessUser> = {}) => {
      const bound = {
        role,
        ...(id !== undefined ? { id } : {}),
        ...(grant !== undefined ? { grant } : {}),
        ...(role === 'frontend' && id !== undefined && frontendWorkers > 0
          ? { workers: frontendWorkers }
          : {}),
      };
      if (nkey !== undefined) {
        users.push({ ...bound, nkey, comment: 'key given on the command line' });
        return;
      }
      const credential = await ensureRoleCredential(stateDir, prefix, role, id);
      credentials.push(credential);
      users.push({ ...bound, nkey: credential.publicKey, comment: `seed: ${relative(credential.seedFile)}` });
    };
    for (const role of ['frontend', 'agent', 'status'] as const) {
      const perProcess = role === 'agent' ? agents : role === 'frontend' ? frontends : [];
      // A shared agent user is every agent: with --require-grants it may claim no identifiers either.
      const sharedGrant = role === 'agent' && ungranted !== undefined ? { grant: ungranted } : {};
      for (const nkey of sharedKeys[role]) await add(role, { nkey, ...sharedGrant });
      // The shared user is generated unless keys were given or per-process users replace it.
      if (sharedKeys[role].length === 0 && perProcess.length === 0) await add(role, sharedGrant);
      for (const user of perProcess) await add(role, user);
    }
    auth.push({ prefix, users });
  }
  const config = natsAuthConfig(auth);
  const notes = [
    '# nats-server configuration written to stdout: include it in nats-server.conf and reload nats-server.',
  ];
  if (credentials.length) {
    notes.push(
      `# seeds (mode 0600) in ${relative(stateDir)}: give each process only its own, e.g. as a Kubernetes Secret; run`,
      ...usageLines(
        'URL',
        credentials,
        new Map(agents.flatMap((a) => (a.grant ? [[a.id, a.grant] as const] : []))),
        frontendWorkers,
      ),
    );
  }
  return { config, notes, credentials };
}
