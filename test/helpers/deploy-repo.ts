/**
 * The repository as the deploy checks (docker-compose.yml, the Dockerfile,
 * deploy/) read it, with files optionally replaced for the deliberate
 * mistakes; the problems they collect; small helpers for parsed YAML.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const COMPOSE_FILE = 'docker-compose.yml';
export const KUBERNETES_DIR = 'deploy/kubernetes';

export type Obj = Record<string, unknown>;
export type Env = Readonly<Record<string, string>>;

export const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
export const obj = (v: unknown): Obj => (isObj(v) ? v : {});
export const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
export const text = (v: unknown): string | undefined =>
  typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;

/** The repository, with some files optionally replaced (for the negative tests). */
export class Repo {
  constructor(private readonly overrides: ReadonlyMap<string, string> = new Map()) {}

  read(path: string): string | undefined {
    const key = posix.normalize(path).replace(/^\.\//, '');
    const replaced = this.overrides.get(key);
    if (replaced !== undefined) return replaced;
    const full = join(ROOT, key);
    return existsSync(full) && statSync(full).isFile() ? readFileSync(full, 'utf8') : undefined;
  }

  exists(path: string): boolean {
    const key = posix.normalize(path).replace(/^\.\//, '');
    return this.overrides.has(key) || existsSync(join(ROOT, key));
  }

  list(dir: string, pattern: RegExp): string[] {
    const found: string[] = [];
    const walk = (rel: string) => {
      for (const entry of readdirSync(join(ROOT, rel), { withFileTypes: true })) {
        const child = posix.join(rel, entry.name);
        if (entry.isDirectory()) walk(child);
        else if (pattern.test(entry.name)) found.push(child);
      }
    };
    walk(dir);
    return found.sort();
  }
}

/** Collects every problem instead of stopping at the first one. */
export class Problems {
  readonly list: string[] = [];
  add(where: string, message: string): void {
    this.list.push(`${where}: ${message}`);
  }
  throwIfAny(what: string): void {
    if (this.list.length) throw new Error(`${what}:\n  - ${this.list.join('\n  - ')}`);
  }
}

/** Records `owner` for `key`; returns who had it already, if anyone. */
export function claim(owners: Map<string, string>, key: string, owner: string): string | undefined {
  const previous = owners.get(key);
  if (previous === undefined) owners.set(key, owner);
  return previous;
}

export function underDir(path: string, dir: string): string | undefined {
  const d = dir.replace(/\/$/, '');
  if (path === d) return '';
  return path.startsWith(`${d}/`) ? path.slice(d.length + 1) : undefined;
}
