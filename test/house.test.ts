/**
 * The house rules of issue 17, checked on the sources (no build needed):
 * - no import circle among the modules of packages/<name>/src and apps/<name>/src: relative imports and exports
 *   (`import`, `import type`, `export ... from`, side-effect and dynamic imports, `.js` resolved to `.ts`)
 *   and imports of another workspace package by name (to its src/index.ts); type-only edges count too;
 * - no `export *` in a package index (src/index.ts): an index is a list of named exports;
 * - every name a package's index exports (packages/* and apps/*) appears in that package's README.md;
 * - a source file over 450 lines says why in its header comment (its first comment block), in a line
 *   with the marker `Over 450 lines:` followed by the reason.
 * The first tests check the checkers on small planted inputs, so a checker that finds nothing fails here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const MAX_LINES = 450;
/** The marker of a long file's reason, in its header comment: `Over 450 lines: <why>`. */
const LONG_FILE_MARKER = /Over 450 lines:\s*\S/;

const workspaces: string[] = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).workspaces;
/** Workspace package name -> its folder. */
const packageDirs = new Map<string, string>(
  workspaces.map((ws) => [JSON.parse(readFileSync(join(ROOT, ws, 'package.json'), 'utf8')).name as string, join(ROOT, ws)]),
);
/** The folders whose modules the rules cover: packages/* and apps/*. */
const covered = workspaces.filter((ws) => ws.startsWith('packages/') || ws.startsWith('apps/')).map((ws) => join(ROOT, ws));

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'node_modules' && e.name !== 'generated') out.push(...sourceFiles(p));
    } else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The module specifiers a module's text imports or re-exports (static, type-only, side-effect, dynamic). */
function importSpecifiers(text: string): string[] {
  const specs: string[] = [];
  const patterns = [
    /(?:^|\n)\s*(?:import|export)\s+(?:type\s+)?[^'"]*?\bfrom\s+['"]([^'"]+)['"]/g,
    /(?:^|\n)\s*import\s+['"]([^'"]+)['"]/g,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) for (const m of text.matchAll(re)) specs.push(m[1]);
  return specs;
}

/** The file an import of `spec` from `from` reaches, or null outside the workspace sources. */
function resolveImport(from: string, spec: string): string | null {
  if (spec.startsWith('.')) {
    const base = resolve(dirname(from), spec).replace(/\.js$/, '');
    for (const c of [`${base}.ts`, join(base, 'index.ts')]) if (existsSync(c) && statSync(c).isFile()) return c;
    return null;
  }
  const dir = packageDirs.get(spec);
  return dir ? join(dir, 'src', 'index.ts') : null;
}

/** The circles of a graph: each strongly connected component of more than one node, or a node importing itself. */
function findCircles(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const circles: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) circles.push(scc.reverse());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return circles;
}

/** A module's header comment: its first comment block (a block comment, or a run of line comments). */
function headerComment(text: string): string {
  const body = text.replace(/^#![^\n]*\n/, '');
  const block = /^\s*\/\*[\s\S]*?\*\//.exec(body);
  if (block) return block[0];
  const lines = /^\s*(?:\/\/[^\n]*\n?)+/.exec(body);
  return lines ? lines[0] : '';
}

/** Lines of a text as `wc -l` counts them. */
const lineCount = (text: string): number => text.split('\n').length - (text.endsWith('\n') ? 1 : 0);

/** A file over the line limit whose header gives no reason, or null. */
function longFileWithoutReason(text: string): number | null {
  const n = lineCount(text);
  return n > MAX_LINES && !LONG_FILE_MARKER.test(headerComment(text)) ? n : null;
}

const withoutComments = (text: string): string => text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/[^\n]*/g, '');

/** The names an index exports: named export lists (`export { a, b as c }`, `export type { T }`) and declarations. */
function indexNames(text: string): string[] {
  const s = withoutComments(text);
  const names: string[] = [];
  for (const m of s.matchAll(/export\s+(?:type\s+)?\{([^}]*)\}/g)) {
    for (const part of m[1].split(',')) {
      const name = part
        .trim()
        .replace(/^type\s+/, '')
        .split(/\s+as\s+/)
        .pop()!
        .trim();
      if (name) names.push(name);
    }
  }
  const decl =
    /export\s+(?:declare\s+)?(?:async\s+)?(?:const|let|var|function\*?|class|interface|enum|type|namespace)\s+([A-Za-z_$][\w$]*)/g;
  for (const m of s.matchAll(decl)) names.push(m[1]);
  return names;
}

const hasExportStar = (text: string): boolean => /(?:^|[\n;])\s*export\s+(?:type\s+)?\*/.test(withoutComments(text));

const mentions = (readme: string, name: string): boolean => new RegExp(`(?<![\\w$])${name.replace(/\$/g, '\\$')}(?![\\w$])`).test(readme);

test('the checkers find planted faults', () => {
  const a = "import type { B } from './b.js';\nexport const a = 1;\n";
  const b = "import {\n  a,\n} from './a.js';\nexport { c } from './c.js';\nimport './side.js';\nconst d = await import('./d.js');\n";
  assert.deepEqual(importSpecifiers(a), ['./b.js']);
  assert.deepEqual(importSpecifiers(b).sort(), ['./a.js', './c.js', './d.js', './side.js']);
  assert.deepEqual(importSpecifiers(' * import { x } from "./doc.js" in a comment line\n'), []);
  const circles = findCircles(
    new Map([
      ['a', ['b']],
      ['b', ['c', 'x']],
      ['c', ['a']],
      ['d', ['d']],
      ['e', ['a']],
    ]),
  );
  assert.deepEqual(circles.map((c) => [...c].sort()).sort(), [['a', 'b', 'c'], ['d']]);
  const long = (header: string): string => header + '\n' + 'x;\n'.repeat(MAX_LINES);
  assert.equal(longFileWithoutReason(long('/** Does one thing. */')), MAX_LINES + 1);
  assert.equal(longFileWithoutReason(long('/**\n * Does one thing.\n * Over 450 lines: one state machine.\n */')), null);
  assert.equal(longFileWithoutReason(long('/** One job. */\n/* Over 450 lines: not in the header. */')), MAX_LINES + 2);
  assert.equal(longFileWithoutReason('x;\n'.repeat(MAX_LINES)), null);
  assert.ok(hasExportStar("/** x */\nexport * from './a.js';\n"));
  assert.ok(!hasExportStar("// export * from './a.js'\nexport { a } from './a.js';\n"));
  assert.deepEqual(indexNames("export { a, b as c } from './a.js';\nexport type { T, type U } from './t.js';\nexport const k = 1;\n"), [
    'a',
    'c',
    'T',
    'U',
    'k',
  ]);
  assert.ok(mentions('`trainClip` (x)', 'trainClip') && !mentions('trainClipObjective', 'trainClip'));
});

test('no import circle among the modules of packages/*/src and apps/*/src (type-only imports included)', () => {
  const graph = new Map<string, string[]>();
  for (const dir of covered) {
    for (const f of sourceFiles(join(dir, 'src'))) {
      const deps = importSpecifiers(readFileSync(f, 'utf8'))
        .map((s) => resolveImport(f, s))
        .filter((d): d is string => d !== null);
      graph.set(f, [...new Set(deps)]);
    }
  }
  assert.ok(graph.size > 100, `found ${graph.size} modules`);
  const circles = findCircles(graph).map((c) => c.map((f) => relative(ROOT, f)).join(', '));
  assert.deepEqual(circles, [], `modules in an import circle (one circle a line):\n${circles.join('\n')}`);
});

test('every package index is a list of named exports, each in its README', () => {
  for (const ws of workspaces) {
    const index = join(ROOT, ws, 'src', 'index.ts');
    if (!existsSync(index)) continue;
    const text = readFileSync(index, 'utf8');
    assert.ok(!hasExportStar(text), `${relative(ROOT, index)} has an \`export *\`: name the exports`);
  }
  const missing: string[] = [];
  for (const dir of covered) {
    const index = join(dir, 'src', 'index.ts');
    if (!existsSync(index)) continue;
    const readme = readFileSync(join(dir, 'README.md'), 'utf8');
    const names = indexNames(readFileSync(index, 'utf8'));
    assert.ok(names.length > 0, `${relative(ROOT, index)} exports names`);
    const absent = names.filter((n) => !mentions(readme, n));
    if (absent.length) missing.push(`${relative(ROOT, dir)}/README.md lacks ${absent.join(', ')}`);
  }
  assert.deepEqual(missing, [], missing.join('\n'));
});

test(`a source file over ${MAX_LINES} lines says why in its header ("Over 450 lines: ...")`, () => {
  const unexplained: string[] = [];
  for (const dir of covered) {
    for (const f of sourceFiles(join(dir, 'src'))) {
      const n = longFileWithoutReason(readFileSync(f, 'utf8'));
      if (n !== null) unexplained.push(`${relative(ROOT, f)} (${n} lines)`);
    }
  }
  assert.deepEqual(unexplained, [], `over ${MAX_LINES} lines with no "Over 450 lines:" reason in the header:\n${unexplained.join('\n')}`);
});
