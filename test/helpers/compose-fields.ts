/** docker-compose.yml's services as the checks see them, and how Compose reads their fields. */
import { posix } from 'node:path';
import { arr, isObj, type Obj, obj, type Problems, text } from './deploy-repo.js';
import type { Checked } from './knats-invocation.js';
import { lexShell } from './shell-reader.js';

export interface Mount {
  readonly kind: 'volume' | 'bind';
  /** Volume name, or repository path of a bind mount. */
  readonly source: string;
  readonly target: string;
  readonly readOnly: boolean;
}

export interface Service {
  readonly name: string;
  readonly raw: Obj;
  readonly ours: boolean;
  readonly image: string;
  readonly env: Record<string, string>;
  readonly argv: string[];
  readonly mounts: Mount[];
  readonly networks: string[];
  readonly dependsOn: Map<string, string>;
  checked: Checked[];
  curls: string[][];
}

export interface ComposeReport {
  readonly services: ReadonlyMap<string, Service>;
  readonly natsUsers: ReadonlyMap<string, string>;
}

/** Compose's own `${VAR:-default}` interpolation; a variable without a default would depend on the host. */
export function interpolate(value: unknown, where: string, problems: Problems): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (match, braced?: string) => {
      if (match === '$$') return '$';
      const m = braced ? /^[A-Za-z_][A-Za-z0-9_]*:?-([\s\S]*)$/.exec(braced) : null;
      if (m) return m[1]!;
      problems.add(where, `${match} comes from the host environment and has no default`);
      return '';
    });
  }
  if (Array.isArray(value)) return value.map((v) => interpolate(v, where, problems));
  if (isObj(value))
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolate(v, where, problems)]));
  return value;
}

/** Compose splits a string command like a shell would, without running one. */
export function splitCommand(value: unknown, where: string, problems: Problems): string[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) return value.map((v) => text(v) ?? '');
  const s = text(value);
  if (s === undefined) return undefined;
  const tokens = lexShell(s);
  if (tokens.some((t) => 'op' in t))
    problems.add(where, `shell syntax in a command that no shell runs: ${s}`);
  return tokens.flatMap((t) => ('word' in t ? [t.word.map((seg) => seg.text).join('')] : []));
}

export function composeEnv(value: unknown): Record<string, string> {
  const env: Record<string, string> = {};
  if (Array.isArray(value)) {
    for (const item of value) {
      const s = text(item) ?? '';
      const eq = s.indexOf('=');
      if (eq > 0) env[s.slice(0, eq)] = s.slice(eq + 1);
    }
  } else {
    for (const [k, v] of Object.entries(obj(value))) {
      const s = text(v);
      if (s !== undefined) env[k] = s;
    }
  }
  return env;
}

export function composeMounts(value: unknown): Mount[] {
  return arr(value).map((item) => {
    if (isObj(item)) {
      const source = text(item.source) ?? '';
      return {
        kind: item.type === 'bind' ? 'bind' : 'volume',
        source: item.type === 'bind' ? posix.normalize(source) : source,
        target: text(item.target) ?? '',
        readOnly: item.read_only === true,
      } as Mount;
    }
    const [source = '', target = '', mode = ''] = (text(item) ?? '').split(':');
    const bind = /^[./~]/.test(source);
    return {
      kind: bind ? 'bind' : 'volume',
      source: bind ? posix.normalize(source) : source,
      target,
      readOnly: mode.split(',').includes('ro'),
    } as Mount;
  });
}
