/**
 * Every relative import in the project's TypeScript sources follows the room
 * map in broker/README.md, the one place the allowed directions are written.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SOURCE_ROOTS = ['cli.ts', 'cli', 'client', 'broker', 'frontend', 'agent', 'test'];

interface Area {
  /** `broker/tunnel/` for a folder, `cli.ts` for a single file. */
  readonly name: string;
  readonly mayImport: readonly string[];
}

/** The rows of the room map: `| \`area\` | job | \`a\`, \`b\` |` (or `nothing`). */
function parseRoomMap(markdown: string): Area[] {
  const areas: Area[] = [];
  for (const line of markdown.split('\n')) {
    const row = /^\|\s*`([^`]+)`\s*\|[^|]*\|([^|]*)\|\s*$/.exec(line);
    if (!row) continue;
    const mayImport = [...row[2]!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
    areas.push({ name: row[1]!, mayImport });
  }
  return areas;
}

/** The area a project path (forward slashes) belongs to: the longest name that covers it. */
function areaOf(areas: readonly Area[], file: string): Area | undefined {
  let best: Area | undefined;
  for (const area of areas) {
    const covers = area.name.endsWith('/') ? file.startsWith(area.name) : file === area.name;
    if (covers && (!best || area.name.length > best.name.length)) best = area;
  }
  return best;
}

function allows(from: Area, to: Area): boolean {
  if (from.name === to.name) return true;
  return from.mayImport.some(
    (rule) =>
      rule === '*' || rule === to.name || (rule.endsWith('/**') && to.name.startsWith(rule.slice(0, -2))),
  );
}

/** Relative specifiers of static imports, re-exports and dynamic imports (comments are not stripped: none quote one). */
function relativeImports(source: string): string[] {
  const specs: string[] = [];
  for (const m of source.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*)'(\.{1,2}\/[^']+)'/g)) specs.push(m[1]!);
  return specs;
}

function sourceFiles(): string[] {
  const files: string[] = [];
  const walk = (rel: string) => {
    for (const entry of readdirSync(path.join(ROOT, rel), { withFileTypes: true })) {
      const child = `${rel}/${entry.name}`;
      if (entry.isDirectory()) walk(child);
      else if (entry.name.endsWith('.ts')) files.push(child);
    }
  };
  for (const root of SOURCE_ROOTS) {
    if (root.endsWith('.ts')) files.push(root);
    else walk(root);
  }
  return files;
}

/** Every import against the map, one line each: `file -> target (area may not import area)`. */
function violations(areas: readonly Area[]): string[] {
  const found: string[] = [];
  for (const file of sourceFiles()) {
    const from = areaOf(areas, file);
    if (!from) {
      found.push(`${file} is in no area of the room map`);
      continue;
    }
    for (const spec of relativeImports(readFileSync(path.join(ROOT, file), 'utf8'))) {
      const target = path.posix
        .normalize(path.posix.join(path.posix.dirname(file), spec))
        .replace(/\.js$/, '.ts');
      const to = areaOf(areas, target);
      if (!to) found.push(`${file} -> ${target}: the target is in no area of the room map`);
      else if (!allows(from, to)) found.push(`${file} -> ${target} (${from.name} may not import ${to.name})`);
    }
  }
  return found;
}

describe('import directions (broker/README.md room map)', () => {
  const areas = parseRoomMap(readFileSync(path.join(ROOT, 'broker/README.md'), 'utf8'));

  it('the room map names every room of broker/ and the top-level areas', () => {
    const names = areas.map((a) => a.name);
    for (const entry of readdirSync(path.join(ROOT, 'broker'), { withFileTypes: true })) {
      if (entry.isDirectory())
        assert.ok(names.includes(`broker/${entry.name}/`), `broker/${entry.name}/ in the map`);
    }
    for (const root of SOURCE_ROOTS)
      assert.ok(names.includes(root.endsWith('.ts') ? root : `${root}/`), root);
  });

  it('no source file imports against the room map', () => {
    assert.deepEqual(violations(areas), []);
  });
});
