/**
 * A small flag parser with upstream's (Go pflag) conventions: `--name value`,
 * `--name=value`, a single dash works too, booleans as `--flag` or
 * `--flag=false`, a one-letter flag's value may follow it directly (`-v4`),
 * and a list flag may be repeated (its values add up). Every flag can also
 * come from KNATS_<NAME> in the environment; the command line wins. Errors
 * name the flag.
 */
import { ErrorCode, KnatsError } from '../broker/errors.js';
import { assertReadableFile } from '../broker/readable-file.js';
import { MAX_DURATION_MS, parseDuration } from './duration.js';

export type FlagKind = 'string' | 'int' | 'bool' | 'duration';

export interface FlagSpec {
  readonly name: string;
  readonly kind: FlagKind;
  readonly help: string;
  /** Shown in help; the value used when the flag is absent. */
  readonly default?: string | number | boolean;
  /** Value placeholder for help. */
  readonly placeholder?: string;
  /**
   * An upstream Konnectivity flag that has no meaning on a bus: accepted (and
   * its value type-checked) without effect; a start-up warning names this.
   */
  readonly replacedBy?: string;
  /** A comma-separated list that may also be given several times (pflag's StringSlice): the values add up. */
  readonly repeatable?: boolean;
}

export type FlagValue = string | number | boolean;

export interface ParsedFlags {
  readonly values: ReadonlyMap<string, FlagValue>;
  readonly positionals: readonly string[];
  /** Flags given on the command line (the others in `values` came from KNATS_* variables). */
  readonly fromCommandLine: ReadonlySet<string>;
}

export function envName(flag: string): string {
  return `KNATS_${flag.toUpperCase().replace(/-/g, '_')}`;
}

function flagError(flag: string, message: string): KnatsError {
  return new KnatsError(ErrorCode.BadConfig, `--${flag}: ${message}`);
}

function convert(spec: FlagSpec, raw: string): FlagValue {
  switch (spec.kind) {
    case 'string':
      return raw;
    case 'int': {
      if (!/^-?[0-9]+$/.test(raw))
        throw flagError(spec.name, `expected an integer, got ${JSON.stringify(raw)}`);
      return Number(raw);
    }
    case 'bool': {
      const lower = raw.toLowerCase();
      if (['true', '1', 't'].includes(lower)) return true;
      if (['false', '0', 'f'].includes(lower)) return false;
      throw flagError(spec.name, `expected true or false, got ${JSON.stringify(raw)}`);
    }
    case 'duration': {
      const ms = parseDuration(raw);
      if (ms === undefined) {
        throw flagError(spec.name, `expected a duration such as 500ms, 5s or 1m, got ${JSON.stringify(raw)}`);
      }
      // Node's timers cannot wait longer; a longer timeout would fire at once.
      if (ms > MAX_DURATION_MS) throw flagError(spec.name, `${raw} is longer than the maximum of 596h`);
      return ms;
    }
  }
}

export function parseFlags(
  specs: readonly FlagSpec[],
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): ParsedFlags {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const values = new Map<string, FlagValue>();
  const fromArgv = new Set<string>();
  const positionals: string[] = [];
  for (const spec of specs) {
    const fromEnv = env[envName(spec.name)];
    if (fromEnv !== undefined && fromEnv !== '') values.set(spec.name, convert(spec, fromEnv));
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      positionals.push(arg);
      continue;
    }
    let body = arg.replace(/^--?/, '');
    // pflag's shorthand with its value attached: -v4 is -v=4.
    if (!arg.startsWith('--') && !byName.has(body.split('=')[0]!) && byName.get(body[0]!)?.kind === 'int') {
      body = `${body[0]}=${body.slice(1)}`;
    }
    const eq = body.indexOf('=');
    const name = eq >= 0 ? body.slice(0, eq) : body;
    const spec = byName.get(name);
    if (!spec) throw new KnatsError(ErrorCode.BadConfig, `--${name}: unknown flag`);
    let raw: string;
    if (eq >= 0) raw = body.slice(eq + 1);
    else if (spec.kind === 'bool') raw = 'true';
    else {
      const next = argv[i + 1];
      if (next === undefined) throw flagError(name, 'missing value');
      raw = next;
      i++;
    }
    const earlier = values.get(name);
    if (spec.repeatable && fromArgv.has(name) && earlier !== '' && raw !== '') raw = `${earlier},${raw}`;
    fromArgv.add(name);
    values.set(name, convert(spec, raw));
  }
  return { values, positionals, fromCommandLine: fromArgv };
}

/** Typed access with defaults from the specs. */
export class FlagReader {
  private readonly parsed: ParsedFlags;
  private readonly specs: Map<string, FlagSpec>;

  constructor(specs: readonly FlagSpec[], parsed: ParsedFlags) {
    this.parsed = parsed;
    this.specs = new Map(specs.map((s) => [s.name, s]));
  }

  has(name: string): boolean {
    return this.parsed.values.has(name);
  }

  /** Given on the command line, not only in the environment. */
  onCommandLine(name: string): boolean {
    return this.parsed.fromCommandLine.has(name);
  }

  private raw(name: string): FlagValue | undefined {
    const spec = this.specs.get(name);
    if (!spec) throw new Error(`flag ${name} is not declared`);
    const given = this.parsed.values.get(name);
    if (given !== undefined) return given;
    // Defaults are written as a user would type them ("5s"), so they go through the same conversion.
    return spec.default === undefined ? undefined : convert(spec, String(spec.default));
  }

  string(name: string): string | undefined {
    const v = this.raw(name);
    return v === undefined || v === '' ? undefined : String(v);
  }

  /** A file flag: undefined when absent, else a path that exists and can be read (checked now, named in the error). */
  file(name: string): string | undefined {
    const path = this.string(name);
    return path === undefined ? undefined : assertReadableFile(`--${name}`, path);
  }

  int(name: string): number {
    return Number(this.raw(name) ?? 0);
  }

  bool(name: string): boolean {
    return Boolean(this.raw(name));
  }

  /** Durations are milliseconds. */
  duration(name: string): number {
    return Number(this.raw(name) ?? 0);
  }

  port(name: string): number {
    const port = this.int(name);
    if (port < 0 || port > 65535) throw flagError(name, `port ${port} out of range 0-65535`);
    return port;
  }

  get positionals(): readonly string[] {
    return this.parsed.positionals;
  }
}

export function helpText(command: string, synopsis: string, specs: readonly FlagSpec[]): string {
  const lines = [`usage: knats ${command} ${synopsis}`, ''];
  for (const spec of specs) {
    const value = spec.kind === 'bool' ? '' : ` ${spec.placeholder ?? spec.kind.toUpperCase()}`;
    const def = spec.default !== undefined && spec.default !== '' ? ` (default ${String(spec.default)})` : '';
    lines.push(`  --${spec.name}${value}`);
    const help = spec.replacedBy ? `upstream flag, no effect here: ${spec.replacedBy}` : spec.help;
    lines.push(`        ${help}${def} [${envName(spec.name)}]`);
  }
  return lines.join('\n');
}
