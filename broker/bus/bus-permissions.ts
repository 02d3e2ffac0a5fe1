/**
 * What each role needs from the NATS server, and a check of it at start: a
 * process with the wrong credentials says which subject it may not use,
 * instead of reporting ready and half-working.
 *
 * The needs are built from the same Subjects methods the process uses, so
 * they follow any change of the subject layout.
 */
import { createInbox, errors, type NatsConnection, type Status } from '@nats-io/transport-node';
import { claimsToken } from '../wire/identifiers.js';
import type { Subjects } from '../wire/subjects.js';
import { inboxPrefixOf } from './nats-internals.js';

export interface SubscribeNeed {
  readonly subject: string;
}

export interface BusNeeds {
  readonly subscribe: readonly SubscribeNeed[];
  /** Subjects published to; probes carry an empty payload, which every receiver ignores. */
  readonly publish: readonly string[];
}

/**
 * A token no agent or frontend uses as its id, for probe publishes nobody
 * receives (a probe on a live agent's dial subject would reach that agent).
 */
const PROBE_ID = '_knats-permission-check';

export function frontendNeeds(nc: NatsConnection, subjects: Subjects, id: string): BusNeeds {
  return {
    subscribe: [
      { subject: subjects.frontendTunnels(id) },
      { subject: subjects.presenceAll() },
      { subject: subjects.presenceQuery() },
      // Dial replies: the request mux subscribes `<inbox>.*` on the first dial.
      { subject: `${createInbox(inboxPrefixOf(nc))}.*` },
    ],
    publish: [
      subjects.dialAgent(PROBE_ID),
      subjects.agentTunnel(PROBE_ID, PROBE_ID),
      subjects.presence('frontend', id, claimsToken('')),
      subjects.presenceQuery(),
    ],
  };
}

export function agentNeeds(subjects: Subjects, id: string, identifiers: string): BusNeeds {
  return {
    subscribe: [
      { subject: subjects.dialAgent(id) },
      { subject: subjects.agentTunnels(id) },
      { subject: subjects.presenceAll() },
      { subject: subjects.presenceQuery() },
    ],
    publish: [
      subjects.frontendTunnel(PROBE_ID, PROBE_ID),
      subjects.presence('agent', id, claimsToken(identifiers)),
      subjects.presenceQuery(),
    ],
  };
}

export interface Refusal {
  readonly operation: 'subscribe' | 'publish';
  readonly subject: string;
}

/** `subscribe knats.dial.agent.a, publish knats.fe.x.y` */
export function describeRefusals(refusals: readonly Refusal[]): string {
  return refusals.map((r) => `${r.operation} ${r.subject}`).join(', ');
}

/**
 * Asks the server for every need and returns what it refused. Each probe
 * subscription is unsubscribed in the same write as its SUB, so it exists
 * for microseconds (on the agent's own dial subject it takes no dial in
 * practice; the process is not announced yet); the server still answers a
 * refused SUB with -ERR. Refusals arrive before the PONG of the flush (the
 * server answers in order).
 */
export async function refusedPermissions(nc: NatsConnection, needs: BusNeeds): Promise<Refusal[]> {
  const refusals: Refusal[] = [];
  // nats.js returns a QueuedIterator (typed as AsyncIterable): stop() ends it and releases the listener.
  const statuses = nc.status() as AsyncIterable<Status> & { stop(): void };
  const watching = (async () => {
    for await (const status of statuses) {
      if (status.type !== 'error' || !(status.error instanceof errors.PermissionViolationError)) continue;
      const { operation, subject } = status.error;
      refusals.push({ operation: operation === 'publish' ? 'publish' : 'subscribe', subject });
    }
  })();
  try {
    for (const need of needs.subscribe) {
      nc.subscribe(need.subject, { callback: () => {} }).unsubscribe();
    }
    for (const subject of needs.publish) nc.publish(subject);
    await nc.flush();
    // Status events are delivered through an async iterator: let it catch up.
    await new Promise((r) => setTimeout(r, 20));
  } finally {
    statuses.stop();
    await watching;
  }
  return refusals;
}
