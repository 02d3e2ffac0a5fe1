/**
 * The flag documentation against the command line. Our flags are documented in
 * docs/configuration.md, in tables each preceded by a comment naming the commands
 * it is for (`<!-- flags: frontend, agent -->`): every flag of every command must
 * be in exactly one of its tables, and no table may name a flag the command does
 * not have. Upstream's flags that are accepted without effect (`replacedBy`) are
 * documented in the mapping table of docs/migrating-from-konnectivity.md, whose
 * rows name upstream's role for each flag: every one of them must be there, and
 * the table names every flag of upstream's binaries (test/fixtures) and no other.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { brokerConfigFlags, brokerFlags } from '../../cli/broker-command.js';
import { agentFlags, frontendFlags } from '../../cli/config.js';
import { dialFlags } from '../../cli/dial-command.js';
import type { FlagSpec } from '../../cli/flags.js';
import { statusFlags } from '../../cli/status-command.js';
import { proxyAgentFlagNames, proxyServerFlagNames } from '../fixtures/upstream-konnectivity.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const CONFIGURATION = 'docs/configuration.md';
const MIGRATION = 'docs/migrating-from-konnectivity.md';

/** Each command's flag table, as the CLI parses it and prints it for --help. */
const COMMANDS: ReadonlyMap<string, readonly FlagSpec[]> = new Map([
  ['frontend', frontendFlags],
  ['agent', agentFlags],
  ['broker', brokerFlags],
  ['broker config', brokerConfigFlags],
  ['dial', dialFlags],
  ['status', statusFlags],
]);

/** Upstream's binaries, by the role words of the migration table, and the command that stands in for each. */
const UPSTREAM_ROLES = {
  server: { command: 'frontend', flags: new Set(proxyServerFlagNames) },
  agent: { command: 'agent', flags: new Set(proxyAgentFlagNames) },
} as const;
type UpstreamRole = keyof typeof UPSTREAM_ROLES;

const read = (path: string) => readFileSync(`${ROOT}${path}`, 'utf8');

/** A table row's cells (a `\|` inside a cell is not a separator). */
function cells(row: string): string[] {
  return row
    .trim()
    .split(/(?<!\\)\|/)
    .slice(1, -1)
    .map((cell) => cell.trim());
}

/** The flags a cell names: each flag starts a code span (`--mode grpc\|http-connect`, `--v N`). */
function flagsIn(cell: string): string[] {
  return [...cell.matchAll(/`--([a-z0-9][a-z0-9-]*)/g)].map((m) => m[1]!);
}

/** The body rows of the table that starts at `lines[start]` (or after blank lines from there). */
function tableRows(lines: readonly string[], start: number): string[] {
  let i = start;
  while (lines[i]?.trim() === '') i++;
  const rows: string[] = [];
  for (; lines[i]?.startsWith('|'); i++) rows.push(lines[i]!);
  return rows.slice(2); // header and separator
}

interface DocumentedRow {
  readonly commands: readonly string[];
  readonly flags: readonly string[];
  readonly line: string;
}

/** The rows of docs/configuration.md's flag tables, with the commands their marker names. */
function configurationRows(): DocumentedRow[] {
  const lines = read(CONFIGURATION).split('\n');
  return lines.flatMap((line, index) => {
    const marker = /^<!-- flags: (.+) -->$/.exec(line.trim());
    if (!marker) return [];
    const commands = marker[1]!.split(',').map((c) => c.trim());
    for (const command of commands) assert.ok(COMMANDS.has(command), `${line}: no command "${command}"`);
    const rows = tableRows(lines, index + 1);
    assert.ok(rows.length > 0, `${CONFIGURATION}: ${line} is not followed by a flag table`);
    return rows.map((row) => {
      const flags = flagsIn(cells(row)[0] ?? '');
      assert.ok(flags.length > 0, `${CONFIGURATION}: a row naming no flag: ${row.slice(0, 80)}`);
      return { commands, flags, line: row };
    });
  });
}

/** The migration page's mapping table: each upstream flag with the roles its row names. */
function migrationFlags(): { flag: string; roles: UpstreamRole[] }[] {
  const lines = read(MIGRATION).split('\n');
  const header = lines.findIndex((l) => l.startsWith('| upstream flag (role)'));
  assert.ok(header >= 0, `${MIGRATION}: the mapping table "upstream flag (role)"`);
  return tableRows(lines, header).flatMap((row) =>
    // `--agent-port`, `--agent-bind-address` (server); `--proxy-server-host` (agent)
    (cells(row)[0] ?? '').split(';').flatMap((part) => {
      const roleWords = /\(([^)]*)\)\s*$/.exec(part)?.[1]?.split(/,\s*/) ?? [];
      const roles = roleWords.flatMap((w): UpstreamRole[] =>
        w === 'both' ? ['server', 'agent'] : w === 'server' || w === 'agent' ? [w] : [],
      );
      assert.ok(roles.length > 0, `${MIGRATION}: no role (server, agent, both) in "${part.trim()}"`);
      return flagsIn(part).map((flag) => ({ flag, roles }));
    }),
  );
}

describe('flags in the docs', () => {
  const rows = configurationRows();

  for (const [command, specs] of COMMANDS) {
    it(`knats ${command}: each of its flags is in exactly one of its tables in ${CONFIGURATION}`, () => {
      const documented = rows.filter((r) => r.commands.includes(command)).flatMap((r) => r.flags);
      const ours = specs.filter((s) => s.replacedBy === undefined).map((s) => s.name);
      const missing = ours.filter((name) => !documented.includes(name));
      const twice = [...new Set(documented.filter((name, i) => documented.indexOf(name) !== i))];
      assert.deepEqual(missing, [], `knats ${command}: flags of the CLI in no table`);
      assert.deepEqual(twice, [], `knats ${command}: flags in more than one row`);
    });

    it(`knats ${command}: its tables in ${CONFIGURATION} name only flags it has, with an effect`, () => {
      const byName = new Map(specs.map((s) => [s.name, s]));
      const documented = rows.filter((r) => r.commands.includes(command)).flatMap((r) => r.flags);
      const unknown = documented.filter((name) => !byName.has(name));
      const withoutEffect = documented.filter((name) => byName.get(name)?.replacedBy !== undefined);
      assert.deepEqual(unknown, [], `knats ${command}: documented flags the CLI does not have`);
      assert.deepEqual(
        withoutEffect,
        [],
        `knats ${command}: upstream flags without effect, documented as ours`,
      );
    });
  }

  it(`every upstream flag accepted without effect is in the mapping table of ${MIGRATION}`, () => {
    const mapped = migrationFlags();
    const missing = (Object.keys(UPSTREAM_ROLES) as UpstreamRole[]).flatMap((role) =>
      COMMANDS.get(UPSTREAM_ROLES[role].command)!
        .filter((s) => s.replacedBy !== undefined)
        .filter((s) => !mapped.some((m) => m.flag === s.name && m.roles.includes(role)))
        .map((s) => `--${s.name} (${role})`),
    );
    assert.deepEqual(missing, []);
  });

  it(`the mapping table of ${MIGRATION} names every flag of upstream's, for each role that has it`, () => {
    const mapped = migrationFlags();
    const missing = (Object.keys(UPSTREAM_ROLES) as UpstreamRole[]).flatMap((role) =>
      [...UPSTREAM_ROLES[role].flags]
        .filter((flag) => !mapped.some((m) => m.flag === flag && m.roles.includes(role)))
        .map((flag) => `--${flag} (${role})`),
    );
    assert.deepEqual(missing, []);
  });

  it(`the mapping table of ${MIGRATION} names only upstream's flags, each for a role that has it`, () => {
    const notUpstream = migrationFlags().flatMap(({ flag, roles }) =>
      roles.filter((role) => !UPSTREAM_ROLES[role].flags.has(flag)).map((role) => `--${flag} (${role})`),
    );
    assert.deepEqual(notUpstream, []);
  });
});
