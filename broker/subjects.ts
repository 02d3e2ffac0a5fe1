/**
 * Every NATS subject of the bus is built here and nowhere else.
 *
 *   P.dial.any               queue group of all agents (default strategy)
 *   P.dial.agent.<agentId>   one agent (destHost / identifier routing)
 *   P.dial.route             queue group of agents with default-route=true
 *   P.presence               heartbeats of agents and frontends
 *   P.presence.query         "everyone answer now"
 *   P.fe.<frontendId>.<tid>  frames to a frontend's end of a tunnel
 *   P.ag.<agentId>.<tid>     frames to an agent's end of a tunnel
 */
import { ErrorCode, KnatsError } from './errors.js';

/** Queue group name shared by agents on the dial subjects. */
export const AGENT_QUEUE = 'agents';

const TOKEN = /^[A-Za-z0-9_-]+$/;

/** Ids and prefixes become subject tokens: no dots, wildcards or spaces. */
export function assertToken(value: string, what: string): string {
  if (!TOKEN.test(value)) {
    throw new KnatsError(
      ErrorCode.BadConfig,
      `${what} ${JSON.stringify(value)} must be letters, digits, '_' or '-' (it becomes a NATS subject token)`,
    );
  }
  return value;
}

export class Subjects {
  readonly prefix: string;
  constructor(prefix: string) {
    this.prefix = assertToken(prefix, 'subject prefix');
  }
  dialAny(): string {
    return `${this.prefix}.dial.any`;
  }
  dialAgent(agentId: string): string {
    return `${this.prefix}.dial.agent.${agentId}`;
  }
  dialRoute(): string {
    return `${this.prefix}.dial.route`;
  }
  presence(): string {
    return `${this.prefix}.presence`;
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
