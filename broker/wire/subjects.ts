/**
 * Every NATS subject of the bus is built here and nowhere else.
 *
 *   P.dial.agent.<agentId>   dials for one agent, chosen by the frontend
 *                            (every strategy); only that agent may read it
 *   P.presence.<role>.<id>.<claims>  heartbeats of agents and frontends; the
 *                            NATS user of a process may publish only on its own
 *                            (see broker/nats-auth.ts), so receivers take role,
 *                            id and the identifiers' hash from the subject
 *   P.presence.query         "everyone answer now"
 *   P.fe.<frontendId>.<tid>  frames to a frontend's end of a tunnel
 *   P.ag.<agentId>.<tid>     frames to an agent's end of a tunnel
 */
import { ErrorCode, KnatsError } from '../errors.js';

const TOKEN = /^[A-Za-z0-9_~-]+$/;

/** Longest agent / frontend id or subject prefix. */
export const MAX_ID_LENGTH = 128;
/** Longest tunnel id (ours are 22 characters). */
export const MAX_TUNNEL_ID_LENGTH = 64;

const ID_CHARACTER = /[A-Za-z0-9_-]/;

/**
 * A process id as one subject token. Upstream takes any string for an agent or
 * server id (node names and addresses have dots), a subject token cannot have
 * one: letters, digits, '_' and '-' stay, every other UTF-8 byte becomes ~XX.
 * No two ids share a token ('a.b' is a~2eb, 'a_b' stays), and an id that was a
 * token already is unchanged.
 */
export function idToken(id: string): string {
  let token = '';
  for (const character of id) {
    if (ID_CHARACTER.test(character)) token += character;
    else for (const byte of Buffer.from(character)) token += `~${byte.toString(16).padStart(2, '0')}`;
  }
  return token;
}

/** The id idToken wrote as `token`. */
export function idOfToken(token: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < token.length; i++) {
    if (token[i] === '~') {
      bytes.push(Number.parseInt(token.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(token.charCodeAt(i));
  }
  return Buffer.from(bytes).toString();
}

/**
 * True if `value` can be used as one subject token: letters, digits, '_', '-'
 * or '~' (the escape of idToken), 1 to `maxLength` characters. Every id a peer sends is checked with
 * this before it is used in a subject, a map key or a log line.
 */
export function isToken(value: string, maxLength = MAX_ID_LENGTH): boolean {
  return typeof value === 'string' && value.length <= maxLength && TOKEN.test(value);
}

/** Ids and prefixes from our own configuration become subject tokens: no dots, wildcards or spaces. */
export function assertToken(value: string, what: string): string {
  if (!isToken(value)) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `${what} ${JSON.stringify(value.length > MAX_ID_LENGTH ? `${value.slice(0, MAX_ID_LENGTH)}...` : value)} must be 1 to ${MAX_ID_LENGTH} letters, digits, '_', '-' or ~XX escapes (it becomes a NATS subject token)`,
    );
  }
  return value;
}

export type PresenceRole = 'agent' | 'frontend';

/** Role, id and identifiers' hash of a heartbeat, from its subject. */
export interface PresenceSender {
  readonly role: PresenceRole;
  readonly id: string;
  readonly claims: string;
}

/**
 * A frontend's replies (dial answers) arrive under this inbox prefix, which
 * only its own NATS user may read: other frontends never see its tunnel ids.
 */
export function frontendInboxPrefix(frontendId: string): string {
  return `_INBOX.fe.${frontendId}`;
}

export class Subjects {
  readonly prefix: string;
  constructor(prefix: string) {
    this.prefix = assertToken(prefix, 'subject prefix');
  }
  dialAgent(agentId: string): string {
    return `${this.prefix}.dial.agent.${agentId}`;
  }
  /**
   * Where a process heartbeats: `claims` is the hash of its identifiers
   * (identifiers.ts claimsToken). With '*' for id or claims: a permission.
   */
  presence(role: PresenceRole, id: string, claims: string): string {
    return `${this.prefix}.presence.${role}.${id}.${claims}`;
  }
  /** Every heartbeat, of any role and id. */
  presenceAll(): string {
    return `${this.prefix}.presence.*.*.*`;
  }
  /** Who sent a heartbeat, from its subject; undefined unless every token is sane. */
  presenceSender(subject: string): PresenceSender | undefined {
    const head = `${this.prefix}.presence.`;
    if (!subject.startsWith(head)) return undefined;
    const [role, id, claims, ...rest] = subject.slice(head.length).split('.');
    if (rest.length || (role !== 'agent' && role !== 'frontend')) return undefined;
    if (id === undefined || claims === undefined || !isToken(id) || !isToken(claims, 64)) return undefined;
    return { role, id, claims };
  }
  presenceQuery(): string {
    return `${this.prefix}.presence.query`;
  }
  frontendTunnel(frontendId: string, tunnelId: string): string {
    return `${this.prefix}.fe.${frontendId}.${tunnelId}`;
  }
  agentTunnel(agentId: string, tunnelId: string): string {
    return `${this.prefix}.ag.${agentId}.${tunnelId}`;
  }
  /** Prefix of every agent-side / frontend-side frame subject. */
  agentFramePrefix(): string {
    return `${this.prefix}.ag.`;
  }
  frontendFramePrefix(): string {
    return `${this.prefix}.fe.`;
  }
  /** The one wildcard subscription a process holds for all its tunnel ends. */
  frontendTunnels(frontendId: string): string {
    return `${this.prefix}.fe.${frontendId}.*`;
  }
  agentTunnels(agentId: string): string {
    return `${this.prefix}.ag.${agentId}.*`;
  }
}

/** The tunnel id is the last token of a frame subject. */
export function tunnelIdOf(subject: string): string {
  return subject.slice(subject.lastIndexOf('.') + 1);
}
