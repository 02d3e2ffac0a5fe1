/**
 * `knats status`: the fleet as seen on the bus, from one presence query.
 */
import type { PresenceInfo } from '../broker/bus-messages.js';
import { presenceCodec } from '../broker/bus-messages.js';
import { connectBus } from '../broker/connection.js';
import { silentLogger } from '../broker/logging.js';
import { Subjects } from '../broker/subjects.js';
import { VERSION } from '../broker/version.js';
import { natsFlags, natsSettings } from './config.js';
import { FlagReader, type FlagSpec, parseFlags } from './flags.js';

export const statusFlags: FlagSpec[] = [
  ...natsFlags,
  { name: 'json', kind: 'bool', default: false, help: 'print JSON instead of a table' },
  { name: 'wait', kind: 'duration', default: '1s', help: 'how long to collect answers', placeholder: 'DUR' },
];

export async function collectFleet(
  nc: import('@nats-io/transport-node').NatsConnection,
  prefix: string,
  waitMs: number,
) {
  const subjects = new Subjects(prefix);
  const seen = new Map<string, PresenceInfo & { lastSeenMs: number }>();
  const started = Date.now();
  const sub = nc.subscribe(subjects.presence(), {
    callback: (err, msg) => {
      if (err) return;
      try {
        const info = presenceCodec.decode(msg.data);
        if (info.alive) seen.set(info.id, { ...info, lastSeenMs: Date.now() - started });
        else seen.delete(info.id);
      } catch {
        // a malformed heartbeat is not our problem to report here
      }
    },
  });
  await nc.flush();
  nc.publish(subjects.presenceQuery());
  await new Promise((r) => setTimeout(r, waitMs));
  sub.unsubscribe();
  return [...seen.values()].sort((a, b) => a.role.localeCompare(b.role) || a.id.localeCompare(b.id));
}

export async function runStatus(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const flags = new FlagReader(statusFlags, parseFlags(statusFlags, argv, env));
  const nc = await connectBus(natsSettings(flags), 'knats-status', silentLogger(), {}, false);
  const fleet = await collectFleet(nc, flags.string('subject-prefix') ?? 'knats', flags.duration('wait'));
  await nc.close();
  const versions = new Set(fleet.map((p) => p.version));
  const warnings: string[] = [];
  if (versions.size > 1) warnings.push(`version skew: ${[...versions].join(', ')}`);
  if (!fleet.some((p) => p.role === 'agent'))
    warnings.push('no agent on the bus: every dial fails with "No agent available"');
  if (flags.bool('json')) {
    process.stdout.write(
      `${JSON.stringify({ statusVersion: VERSION, members: fleet, warnings }, null, 2)}\n`,
    );
    return;
  }
  const rows = [['ROLE', 'ID', 'VERSION', 'UPTIME', 'TUNNELS', 'DRAINING', 'IDENTIFIERS']];
  for (const p of fleet) {
    rows.push([
      p.role,
      p.id,
      p.version,
      `${Math.round(p.uptimeMs / 1000)}s`,
      String(p.openTunnels),
      p.draining ? 'yes' : 'no',
      p.identifiers || '-',
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows) process.stdout.write(`${row.map((c, i) => c.padEnd(widths[i]!)).join('  ')}\n`);
  for (const w of warnings) process.stdout.write(`warning: ${w}\n`);
}
