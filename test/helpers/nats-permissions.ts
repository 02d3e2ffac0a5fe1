/**
 * Probing NATS permissions on a real nats-server: connections that record
 * the server's refusals, assertions that a subscribe or publish is refused or
 * allowed, and `knats broker config` run as the real CLI.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { connect, type NatsConnection, PermissionViolationError } from '@nats-io/transport-node';
import { connectionOptions, type NatsSettings } from '../../broker/bus/connection.js';
import { cliPath } from './fleet.js';

export type ProbedConnection = NatsConnection & { errors: Error[] };

/** A connection that records every async error the server sends it (permission violations). */
export async function connectWith(
  settings: NatsSettings,
  name = 'permissions-test',
): Promise<ProbedConnection> {
  const nc = await connect(connectionOptions(settings, name, false));
  const errors: Error[] = [];
  void (async () => {
    for await (const status of nc.status()) if (status.type === 'error') errors.push(status.error);
  })();
  return Object.assign(nc, { errors });
}

/** Subscribes and returns the server's refusal, or undefined if the subscription stands. */
export async function subscribeRefusal(
  nc: NatsConnection,
  subject: string,
  queue?: string,
): Promise<PermissionViolationError | undefined> {
  let refusal: PermissionViolationError | undefined;
  const sub = nc.subscribe(subject, {
    ...(queue ? { queue } : {}),
    callback: (err) => {
      if (err) refusal = err as PermissionViolationError;
    },
  });
  // The server answers SUB before the PING of the flush: once flushed, any -ERR has been processed.
  await nc.flush();
  await new Promise((r) => setImmediate(r));
  if (!refusal) sub.unsubscribe();
  return refusal;
}

export async function assertSubscribeRefused(
  nc: NatsConnection,
  subject: string,
  queue?: string,
): Promise<void> {
  const refusal = await subscribeRefusal(nc, subject, queue);
  assert.ok(
    refusal instanceof PermissionViolationError,
    `subscribing to ${subject} ${queue ?? ''} was not refused`,
  );
  assert.equal(refusal.operation, 'subscription');
  assert.equal(refusal.subject, subject);
  assert.match(refusal.message, /Permissions Violation for Subscription/);
}

export async function assertSubscribeAllowed(
  nc: NatsConnection,
  subject: string,
  queue?: string,
): Promise<void> {
  const refusal = await subscribeRefusal(nc, subject, queue);
  assert.equal(
    refusal,
    undefined,
    `subscribing to ${subject} ${queue ?? ''} was refused: ${refusal?.message}`,
  );
}

/** Publishes and returns the server's refusal, or undefined if the publish went through. */
export async function publishRefusal(
  nc: ProbedConnection,
  subject: string,
  data: Uint8Array | string = 'x',
): Promise<PermissionViolationError | undefined> {
  const before = nc.errors.length;
  nc.publish(subject, data);
  await nc.flush();
  await new Promise((r) => setImmediate(r));
  const refusal = nc.errors.slice(before).find((e) => e instanceof PermissionViolationError);
  return refusal as PermissionViolationError | undefined;
}

export async function assertPublishRefused(nc: ProbedConnection, subject: string): Promise<void> {
  const refusal = await publishRefusal(nc, subject);
  assert.ok(refusal instanceof PermissionViolationError, `publishing to ${subject} was not refused`);
  assert.equal(refusal.operation, 'publish');
  assert.equal(refusal.subject, subject);
}

export async function assertPublishAllowed(nc: ProbedConnection, subject: string): Promise<void> {
  const before = nc.errors.length;
  nc.publish(subject, 'x');
  await nc.flush();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(nc.errors.slice(before), [], `publishing to ${subject} was refused`);
}

/** `knats broker config ...` run as the real CLI; returns its stdout. */
export function brokerConfigCli(args: string[], cwd: string): string {
  return execFileSync(process.execPath, [cliPath, 'broker', 'config', ...args], {
    cwd,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}
