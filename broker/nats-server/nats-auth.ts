/**
 * Least privilege on the bus: the permissions of each role, the
 * nats-server configuration that enforces them, and the nkey credentials of
 * each role.
 *
 * Design:
 * - One NATS account per subject prefix: accounts are nats-server's hard
 *   isolation boundary, so one prefix (one cluster) cannot see another's
 *   subjects, not even the `_INBOX.>` replies of its dials. Inside the
 *   account every user is further limited to its role's subjects.
 * - Users authenticate with nkeys: the server configuration holds only
 *   public keys (no secret, no password hash to protect), and each process
 *   gets its seed file (`--nats-nkey FILE`). Rotating a key is editing one
 *   line and reloading nats-server (`nats-server --signal reload`).
 * - Roles: `frontend`, `agent` (shared by all agents, or one user per agent
 *   id for per-agent isolation), and `status` (read-only fleet view, for
 *   `knats status`).
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { nkeys } from '@nats-io/transport-node';
import { ErrorCode, KnatsError } from '../errors.js';
import { claimsToken, parseAgentIdentifiers } from '../wire/identifiers.js';
import { assertToken, frontendInboxPrefix, Subjects } from '../wire/subjects.js';

export type Role = 'frontend' | 'agent' | 'status';

export interface RolePermissions {
  readonly publish: readonly string[];
  readonly subscribe: readonly string[];
  /** May publish to the reply subject of a request it received (once, within 2 minutes). */
  readonly allowResponses: boolean;
}

/** Most workers of one frontend (`--workers`), and so most worker ids a frontend user may be granted. */
export const MAX_FRONTEND_WORKERS = 64;

/**
 * The bus id of worker `index` (1-based) of a frontend run with `--workers N`:
 * each worker is its own frontend on the bus (own frames, inbox, heartbeat).
 */
export function frontendWorkerId(frontendId: string, index: number): string {
  return `${frontendId}-w${index}`;
}

/**
 * A frontend sends dials and frames to agents and announces itself; it reads
 * frontends' frames, presence and its request replies. With `frontendId` the
 * user is bound to `--server-id ID`: it reads only its own frames and its own
 * inbox (so no frontend learns another's tunnel ids from dial replies) and
 * heartbeats only as itself. It may NOT read agents' frame subjects nor
 * publish frontends' (so it cannot pose as an agent).
 *
 * `workers`: the bound user may also be each worker of `--server-id ID
 * --workers N` (ids ID-w1 .. ID-wN; subject wildcards match whole tokens
 * only, so each worker id is listed).
 */
export function frontendPermissions(prefix: string, frontendId?: string, workers = 0): RolePermissions {
  const s = new Subjects(prefix);
  if (frontendId === undefined) {
    return {
      publish: [`${prefix}.dial.>`, `${prefix}.ag.>`, s.presence('frontend', '*', '*'), s.presenceQuery()],
      subscribe: [`${prefix}.fe.>`, s.presenceAll(), s.presenceQuery(), '_INBOX.>'],
      allowResponses: false,
    };
  }
  assertToken(frontendId, 'frontend id');
  const ids = [frontendId];
  for (let k = 1; k <= workers; k++)
    ids.push(assertToken(frontendWorkerId(frontendId, k), 'frontend worker id'));
  return {
    publish: [
      `${prefix}.dial.>`,
      `${prefix}.ag.>`,
      ...ids.map((id) => s.presence('frontend', id, '*')),
      s.presenceQuery(),
    ],
    subscribe: [
      ...ids.map((id) => s.frontendTunnels(id)),
      s.presenceAll(),
      s.presenceQuery(),
      ...ids.map((id) => `${frontendInboxPrefix(id)}.>`),
    ],
    allowResponses: false,
  };
}

/**
 * An agent takes dials only on its own dial subject (frontends choose the
 * agent; there is no queue group whose share an agent could enlarge by
 * subscribing many times); it reads its frames and presence; it publishes
 * only frames to frontends, its own heartbeats and dial replies. Without
 * `agentId` the user is shared by all agents (any agent may then read any
 * agent's dials and frames and heartbeat as any agent); with it, only that
 * agent's subjects.
 *
 * `grant` (identifiers text; for a shared user only the empty set): the identifiers this
 * agent may claim. Its heartbeats are then allowed only under the hash of
 * that set (frontends check claims against it, see identifiers.ts
 * claimsToken), so it is offered destHost and default-route dials only as
 * granted.
 */
export function agentPermissions(prefix: string, agentId?: string, grant?: string): RolePermissions {
  const s = new Subjects(prefix);
  if (agentId !== undefined) assertToken(agentId, 'agent id');
  // A shared user is every agent: it can be granted no identifiers (--require-grants), not some.
  if (grant && agentId === undefined) {
    throw new KnatsError(ErrorCode.BadConfig, 'identifiers can be granted only to a per-agent user');
  }
  const granted = grant === undefined ? undefined : parseAgentIdentifiers(grant);
  return {
    publish: [
      `${prefix}.fe.>`,
      s.presence('agent', agentId ?? '*', granted ? claimsToken(granted.text) : '*'),
      s.presenceQuery(),
    ],
    subscribe: [
      agentId === undefined ? s.dialAgent('*') : s.dialAgent(agentId),
      agentId === undefined ? `${prefix}.ag.>` : s.agentTunnels(agentId),
      s.presenceAll(),
      s.presenceQuery(),
    ],
    allowResponses: true,
  };
}

/** `knats status`: reads presence, asks for it; nothing else. */
export function statusPermissions(prefix: string): RolePermissions {
  const s = new Subjects(prefix);
  return { publish: [s.presenceQuery()], subscribe: [s.presenceAll()], allowResponses: false };
}

/**
 * `id`: the agent or frontend id a per-process user is bound to; `grant`: an
 * agent's granted identifiers; `workers`: a bound frontend's worker ids.
 */
export function permissionsFor(
  prefix: string,
  role: Role,
  id?: string,
  grant?: string,
  workers?: number,
): RolePermissions {
  switch (role) {
    case 'frontend':
      return frontendPermissions(prefix, id, workers);
    case 'agent':
      return agentPermissions(prefix, id, grant);
    case 'status':
      return statusPermissions(prefix);
  }
}

// ---------------------------------------------------------------------------
// Users and the server configuration.

export interface AuthUser {
  readonly role: Role;
  /** Per-process user bound to this agent / frontend id; absent for a role's shared user. */
  readonly id?: string;
  /** Per-agent users: the identifiers it may claim (absent: any). */
  readonly grant?: string;
  /** Per-frontend users: it may also be the workers ID-w1 .. ID-wN of `--workers N`. */
  readonly workers?: number;
  /** Public user nkey (U...). */
  readonly nkey: string;
  /** Shown as a comment next to the user (where its seed is). */
  readonly comment?: string;
}

export interface PrefixAuth {
  readonly prefix: string;
  readonly users: readonly AuthUser[];
}

/** Throws BadConfig unless `key` is a public user nkey. */
export function assertUserNkey(key: string, what: string): string {
  let ok = false;
  try {
    ok = key.startsWith('U') && nkeys.fromPublic(key).getPublicKey() === key;
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `${what}: ${JSON.stringify(key)} is not a public user nkey (U..., 56 characters)`,
    );
  }
  return key;
}

const list = (items: readonly string[]) => `[${items.map((i) => JSON.stringify(i)).join(', ')}]`;

function userBlock(prefix: string, user: AuthUser, indent: string): string[] {
  const p = permissionsFor(prefix, user.role, user.id, user.grant, user.workers);
  const label = [
    user.role,
    user.id,
    user.grant === undefined
      ? ''
      : user.grant
        ? `may claim ${JSON.stringify(user.grant)}`
        : 'may claim no identifiers',
    user.workers
      ? `and its workers ${frontendWorkerId(user.id ?? '', 1)}..${frontendWorkerId(user.id ?? '', user.workers)}`
      : '',
  ]
    .filter(Boolean)
    .join(' ');
  const lines = [
    `${indent}# ${label}${user.comment ? ` (${user.comment})` : ''}`,
    `${indent}{`,
    `${indent}  nkey: ${JSON.stringify(user.nkey)}`,
    `${indent}  permissions: {`,
    `${indent}    publish: { allow: ${list(p.publish)} }`,
    `${indent}    subscribe: { allow: ${list(p.subscribe)} }`,
  ];
  if (p.allowResponses) lines.push(`${indent}    allow_responses: true`);
  lines.push(`${indent}  }`, `${indent}}`);
  return lines;
}

/**
 * The `accounts { ... }` block of a nats-server configuration (2.2 or
 * newer; checked with Debian's 2.9.10): one account per prefix, users by
 * public nkey, per-role permissions. Clients must authenticate: there is no
 * `no_auth_user`.
 */
export function natsAuthConfig(prefixes: readonly PrefixAuth[]): string {
  const seen = new Set<string>();
  const lines = [
    '# konnectivity-nats: least privilege on the bus (one account per subject prefix,',
    '# one nkey user per role). Generated by `knats broker config`; see docs/deployment.md.',
    'accounts {',
  ];
  for (const { prefix, users } of prefixes) {
    assertToken(prefix, 'subject prefix');
    if (seen.has(prefix)) throw new KnatsError(ErrorCode.BadConfig, `prefix ${prefix} given twice`);
    seen.add(prefix);
    lines.push(`  # subject prefix ${prefix}`, `  ${JSON.stringify(prefix)}: {`, '    users: [');
    for (const user of users) lines.push(...userBlock(prefix, user, '      '));
    lines.push('    ]', '  }');
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------
// Credentials on disk.

export interface RoleCredential {
  readonly prefix: string;
  readonly role: Role;
  readonly id?: string;
  /** Seed file for `--nats-nkey`. */
  readonly seedFile: string;
  readonly publicKey: string;
  /** True if the seed was created by this call. */
  readonly created: boolean;
}

export function seedFileFor(stateDir: string, prefix: string, role: Role, id?: string): string {
  const name = id === undefined ? `${role}.nk` : `${role}-${assertToken(id, `${role} id`)}.nk`;
  return path.join(stateDir, assertToken(prefix, 'subject prefix'), name);
}

/**
 * Returns the role's seed file under `stateDir/<prefix>/`, creating a fresh
 * user nkey (mode 0600, folder 0700) unless one is there already; an
 * existing seed is reused, so restarts keep the same credentials.
 */
/**
 * `mkdir -p` with mode 0700 for what it creates. Not `mkdir({ recursive: true })`:
 * Node's recursive mkdir never returns for some impossible paths (one under /proc, seen on Node 20).
 */
async function makeDirectories(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let d = dir; !existsSync(d); d = path.dirname(d)) {
    missing.push(d);
    if (path.dirname(d) === d) break;
  }
  for (const d of missing.reverse()) {
    try {
      await mkdir(d, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

export async function ensureRoleCredential(
  stateDir: string,
  prefix: string,
  role: Role,
  id?: string,
): Promise<RoleCredential> {
  const seedFile = seedFileFor(stateDir, prefix, role, id);
  const seedDir = path.dirname(seedFile);
  let created = false;
  let text: string;
  try {
    await makeDirectories(seedDir);
    await chmod(seedDir, 0o700);
    if (!existsSync(seedFile)) {
      const seed = new TextDecoder().decode(nkeys.createUser().getSeed());
      try {
        await writeFile(seedFile, `${seed}\n`, { mode: 0o600, flag: 'wx' });
        created = true;
      } catch (err) {
        // Another process created it meanwhile: use theirs.
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    text = (await readFile(seedFile, 'utf8')).trim();
  } catch (err) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `state directory ${stateDir} (--state-dir): ${(err as Error).message}`,
      { cause: err },
    );
  }
  let publicKey: string;
  try {
    const pair = nkeys.fromSeed(new TextEncoder().encode(text));
    publicKey = pair.getPublicKey();
  } catch (err) {
    throw new KnatsError(ErrorCode.BadConfig, `${seedFile} does not hold an nkey seed`, { cause: err });
  }
  if (!publicKey.startsWith('U')) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `${seedFile} holds a ${publicKey[0]} nkey, not a user (U) nkey`,
    );
  }
  return { prefix, role, ...(id !== undefined ? { id } : {}), seedFile, publicKey, created };
}
