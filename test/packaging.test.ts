/**
 * Every workspace package is publishable alone: an exports map, a README, and a built dist whose ESM
 * and CJS entry points load in plain Node (no TypeScript loader, no source condition) with the same
 * exports. Run after the build (`npm test` builds first).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const workspaces: string[] = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).workspaces;

/** Export names of a package as plain Node sees them, through require or import. */
function exportNames(name: string, kind: 'cjs' | 'esm'): string[] {
  const script =
    kind === 'cjs'
      ? `console.log(JSON.stringify(Object.keys(require(${JSON.stringify(name)})).sort()))`
      : `import(${JSON.stringify(name)}).then((m) => console.log(JSON.stringify(Object.keys(m).filter((k) => k !== 'default').sort())))`;
  const out = execFileSync(process.execPath, kind === 'cjs' ? ['-e', script] : ['--input-type=module', '-e', script], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  return JSON.parse(out.trim().split('\n').pop()!);
}

for (const ws of workspaces) {
  const pkg = JSON.parse(readFileSync(join(ROOT, ws, 'package.json'), 'utf8'));
  test(`${pkg.name} is publishable on its own`, () => {
    assert.ok(existsSync(join(ROOT, ws, 'README.md')), 'README.md');
    const entry = pkg.exports['.'];
    for (const f of [entry.import.default, entry.import.types, entry.require.default, entry.require.types]) {
      assert.ok(existsSync(join(ROOT, ws, f)), `${f} built`);
    }
    // @vitreg/proto also ships its .proto files (PROTO_PATH points into vitreg/).
    assert.deepEqual(pkg.files, pkg.name === '@vitreg/proto' ? ['dist', 'README.md', 'vitreg'] : ['dist', 'README.md']);
    for (const dep of Object.keys(pkg.dependencies ?? {})) {
      if (dep.startsWith('@vitreg/'))
        assert.ok(
          workspaces.some((w) => JSON.parse(readFileSync(join(ROOT, w, 'package.json'), 'utf8')).name === dep),
          dep,
        );
    }
    const cjs = exportNames(pkg.name, 'cjs');
    const esm = exportNames(pkg.name, 'esm');
    assert.ok(cjs.length > 0, 'exports something');
    assert.deepEqual(cjs, esm, 'CJS and ESM builds export the same names');
  });
}

/** Bare module names a package's sources import (node: built-ins excluded). */
function importedPackages(dir: string): Set<string> {
  const names = new Set<string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) {
        const src = readFileSync(p, 'utf8');
        for (const m of src.matchAll(/(?:from\s+|import\(\s*)['"]([^'"./][^'"]*)['"]/g)) {
          if (m[1].startsWith('node:')) continue;
          const parts = m[1].split('/');
          names.add(m[1].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]);
        }
      }
    }
  };
  walk(dir);
  return names;
}

for (const ws of workspaces) {
  const pkg = JSON.parse(readFileSync(join(ROOT, ws, 'package.json'), 'utf8'));
  test(`${pkg.name} declares every package its sources import`, () => {
    const declared = new Set([
      ...Object.keys(pkg.dependencies ?? {}),
      ...Object.keys(pkg.optionalDependencies ?? {}),
      ...Object.keys(pkg.peerDependencies ?? {}),
    ]);
    const missing = [...importedPackages(join(ROOT, ws, 'src'))].filter((n) => !declared.has(n));
    assert.deepEqual(missing, [], `${pkg.name}: imported but not in dependencies`);
  });
}
