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
    // The sources ship too (the vitreg-source export condition and the source maps point at src/);
    // @vitreg/proto also ships its .proto files (PROTO_PATH points into vitreg/).
    const files = ['dist', 'src', 'README.md', 'LICENSE'];
    assert.deepEqual(pkg.files, pkg.name === '@vitreg/proto' ? [...files, 'vitreg'] : files);
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
        // A specifier ends its import/export line (`from 'x';`), or is a dynamic import's argument: text such
        // as `from "${x}") is not` inside a message is neither.
        for (const m of src.matchAll(/from\s+['"]([^'"./][^'"]*)['"](?=\s*;?\s*$)|import\(\s*['"]([^'"./][^'"]*)['"]\s*\)/gm)) {
          const spec = (m[1] ?? m[2])!;
          if (spec.startsWith('node:')) continue;
          const parts = spec.split('/');
          names.add(spec.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!);
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

/** Every file path an exports map names, under any condition. */
function exportTargets(node: unknown): string[] {
  if (typeof node === 'string') return [node];
  if (node && typeof node === 'object') return Object.values(node).flatMap(exportTargets);
  return [];
}

const LICENSE = readFileSync(join(ROOT, 'LICENSE'), 'utf8');

for (const ws of workspaces) {
  const pkg = JSON.parse(readFileSync(join(ROOT, ws, 'package.json'), 'utf8'));
  test(`${pkg.name} publishes what its exports name, its licence and where it comes from`, () => {
    // Every export target, under every condition (vitreg-source included), is inside a published folder or file.
    const published = (path: string) =>
      (pkg.files as string[]).some((f) => path.replace(/^\.\//, '') === f || path.replace(/^\.\//, '').startsWith(`${f}/`));
    for (const target of exportTargets(pkg.exports)) {
      if (target === './package.json') continue;
      assert.ok(published(target), `exports target ${target} is in files ${JSON.stringify(pkg.files)}`);
    }
    for (const bin of Object.values((pkg.bin ?? {}) as Record<string, string>)) assert.ok(published(bin), `bin ${bin} is published`);
    assert.equal(pkg.license, 'Apache-2.0');
    assert.equal(readFileSync(join(ROOT, ws, 'LICENSE'), 'utf8'), LICENSE, `${ws}/LICENSE is the repository's LICENSE`);
    assert.equal(pkg.repository?.type, 'git');
    assert.match(pkg.repository?.url ?? '', /^git\+https:\/\/.+\.git$/);
    assert.equal(pkg.repository?.directory, ws, 'repository.directory: where the package lives in the repository');
  });
}

test('the repository has the Apache-2.0 licence in full', () => {
  assert.match(LICENSE, /^\s*Apache License\s+Version 2\.0, January 2004/);
  assert.match(LICENSE, /END OF TERMS AND CONDITIONS/);
  assert.ok(LICENSE.split('\n').length > 190, 'the full text, not a notice');
});
