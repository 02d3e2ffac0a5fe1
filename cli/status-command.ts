/**
 * `knats status`: the fleet as seen on the bus, from one presence query.
 */
import { connectBus } from '../broker/bus/connection.js';
import { presenceLimits, readHeartbeat } from '../broker/bus/presence.js';
import { silentLogger } from '../broker/logging.js';
import { VERSION } from '../broker/version.js';
import type { PresenceInfo } from '../broker/wire/bus-messages.js';
import { parseAgentIdentifiers } from '../broker/wire/identifiers.js';
import { Subjects } from '../broker/wire/subjects.js';
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
  const sub = nc.subscribe(subjects.presenceAll(), {
    callback: (err, msg) => {
      if (err) return;
      // Who sent it is known from the subject (its credentials); a body naming someone else, or
      // identifiers that are not the ones its subject claims, is dropped as the frontends drop it.
      const sender = subjects.presenceSender(msg.subject);
      if (!sender || (!seen.has(sender.id) && seen.size >= presenceLimits.maxPeers)) return;
      const info = readHeartbeat(sender, msg.data);
      if (typeof info === 'string') return;
      if (info.alive) seen.set(sender.id, { ...info, lastSeenMs: Date.now() });
      else seen.delete(sender.id);
    },
  });
  await nc.flush();
  nc.publish(subjects.presenceQuery());
  await new Promise((r) => setTimeout(r, waitMs));
  sub.unsubscribe();
  const now = Date.now();
  return [...seen.values()]
    .map((m) => ({ ...m, lastSeenMs: now - m.lastSeenMs }))
    .sort((a, b) => a.role.localeCompare(b.role) || a.id.localeCompare(b.id));
}

type Member = PresenceInfo & { lastSeenMs: number };

/** Warnings an operator should see: version skew, and agents no frontend's strategies can reach. */
export function fleetWarnings(fleet: readonly Member[]): string[] {
  const warnings: string[] = [];
  const versions = new Set(fleet.map((p) => p.version));
  if (versions.size > 1) warnings.push(`version skew: ${[...versions].sort().join(', ')}`);
  const agents = fleet.filter((p) => p.role === 'agent');
  const frontends = fleet.filter((p) => p.role === 'frontend');
  if (agents.length === 0) warnings.push('no agent on the bus: every dial fails with "No agent available"');
  if (frontends.length === 0) warnings.push('no frontend on the bus');
  for (const agent of agents) {
    let ids: ReturnType<typeof parseAgentIdentifiers> | undefined;
    try {
      ids = parseAgentIdentifiers(agent.identifiers);
    } catch {
      ids = undefined;
    }
    const reachable = frontends.some((fe) => {
      const strategies = (fe.proxyStrategies || 'default').split(',');
      if (strategies.includes('default')) return true;
      if (strategies.includes('defaultRoute') && ids?.defaultRoute) return true;
      return (
        strategies.includes('destHost') &&
        !!ids &&
        ids.host.length + ids.ipv4.length + ids.ipv6.length + ids.cidr.length > 0
      );
    });
    if (frontends.length > 0 && !reachable) {
      warnings.push(`agent ${agent.id} is reachable by no frontend's --proxy-strategies`);
    }
  }
  return warnings;
}

/** Longest peer string printed; the rest is cut. */
const MAX_SHOWN = 200;

/** C0, DEL and C1 controls (terminal escape sequences), and Unicode line and bidi controls. */
function unsafeForTerminal(code: number): boolean {
  return (
    code < 0x20 ||
    (code >= 0x7f && code <= 0x9f) ||
    code === 0x61c ||
    (code >= 0x200b && code <= 0x200f) ||
    (code >= 0x2028 && code <= 0x202e) ||
    (code >= 0x2066 && code <= 0x2069)
  );
}

/**
 * Peer strings are printed only after this: characters a terminal would act
 * on become `\u{..}`, and long values are cut.
 */
export function sanitizePeerString(value: string): string {
  const cut = value.length > MAX_SHOWN ? `${value.slice(0, MAX_SHOWN)}...` : value;
  let out = '';
  for (const char of cut) {
    const code = char.codePointAt(0)!;
    out += unsafeForTerminal(code) ? `\\u{${code.toString(16)}}` : char;
  }
  return out;
}

/** A fleet member with every string it got from the peer sanitized, for printing. */
function printable(member: Member): Member {
  return {
    ...member,
    id: sanitizePeerString(member.id),
    identifiers: sanitizePeerString(member.identifiers),
    version: sanitizePeerString(member.version),
    proxyStrategies: sanitizePeerString(member.proxyStrategies),
  };
}

function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)}${units[i]}`;
}

export async function runStatus(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const flags = new FlagReader(statusFlags, parseFlags(statusFlags, argv, env));
  const nc = await connectBus(natsSettings(flags), 'knats-status', silentLogger(), {}, false);
  const collected = await collectFleet(nc, flags.string('subject-prefix') ?? 'knats', flags.duration('wait'));
  await nc.close();
  const fleet = collected.map(printable);
  const warnings = fleetWarnings(fleet);
  if (flags.bool('json')) {
    process.stdout.write(
      `${JSON.stringify({ statusVersion: VERSION, members: fleet, warnings }, null, 2)}\n`,
    );
    return;
  }
  const rows = [
    ['ROLE', 'ID', 'VERSION', 'UPTIME', 'TUNNELS', 'BYTES IN/OUT', 'DRAINING', 'LAST SEEN', 'IDENTIFIERS'],
  ];
  for (const p of fleet) {
    rows.push([
      p.role,
      p.id,
      p.version,
      `${Math.round(p.uptimeMs / 1000)}s`,
      String(p.openTunnels),
      `${humanBytes(p.bytesIn)}/${humanBytes(p.bytesOut)}`,
      p.draining ? 'yes' : 'no',
      `${p.lastSeenMs}ms ago`,
      p.role === 'frontend' ? `strategies=${p.proxyStrategies || 'default'}` : p.identifiers || '-',
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows)
    process.stdout.write(
      `${row
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd()}\n`,
    );
  for (const w of warnings) process.stdout.write(`warning: ${w}\n`);
}
