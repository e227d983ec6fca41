/**
 * Every bin works from a clone right after `npm ci`: npm links node_modules/.bin/<name> only when its
 * target (dist/main.js) exists, so the root `prepare` script builds every package and then relinks
 * the bins (`npm rebuild --ignore-scripts`). Runs each bin through the link npm made, with --help, in
 * plain Node (built dist, no TypeScript loader). Run after the build (`npm test` builds first).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MALLOC_TUNABLES } from '@vitreg/core';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const workspaces: string[] = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).workspaces;

const bins: { name: string; ws: string; target: string }[] = [];
for (const ws of workspaces) {
  const pkg = JSON.parse(readFileSync(join(ROOT, ws, 'package.json'), 'utf8'));
  const bin: Record<string, string> = typeof pkg.bin === 'string' ? { [pkg.name]: pkg.bin } : (pkg.bin ?? {});
  for (const [name, target] of Object.entries(bin)) bins.push({ name, ws, target });
}

test('the expected bins are declared', () => {
  assert.deepEqual(bins.map((b) => b.name).sort(), ['vitreg', 'vitreg-coordinator', 'vitreg-worker']);
});

for (const { name, ws, target } of bins) {
  // The bin's source: dist/main.js is built from src/main.ts.
  const source = join(ROOT, ws, target.replace(/^(\.\/)?dist\//, 'src/').replace(/\.js$/, '.ts'));
  const skip = existsSync(source) ? false : `${ws}: ${source.slice(ROOT.length + 1)} is not written yet`;
  test(`node_modules/.bin/${name} --help exits 0 with its usage`, { skip }, () => {
    const link = join(ROOT, 'node_modules', '.bin', name);
    assert.ok(
      existsSync(link),
      `${link} missing: npm links a bin only when its target exists; run npm ci (its prepare builds, then relinks) or npm rebuild --ignore-scripts after a build`,
    );
    assert.equal(realpathSync(link), realpathSync(join(ROOT, ws, target)), 'the link points at the package bin');
    const r = spawnSync(link, ['--help'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    assert.equal(r.error, undefined, String(r.error));
    assert.equal(r.status, 0, `exit ${r.status} ${r.signal ?? ''}\n${r.stderr}`);
    assert.match(r.stdout, /^Usage: /m);
    assert.ok(r.stdout.includes(name), `the usage names ${name}:\n${r.stdout}`);
  });
}

// The training bins start Node with @vitreg/core's MALLOC_TUNABLES (glibc keeps ONNX Runtime's freed
// activations for the next step), through `env -S` on their first line, with a user's own GLIBC_TUNABLES
// after them; the repository's npm scripts that train (vitreg, demo, bench) do the same in sh.
const SHEBANG = `#!/usr/bin/env -S GLIBC_TUNABLES=${MALLOC_TUNABLES}:\${GLIBC_TUNABLES} node`;
for (const { name, ws, target } of bins.filter((b) => b.name !== 'vitreg-coordinator')) {
  const built = join(ROOT, ws, target);
  const skip = existsSync(built) ? false : `${built.slice(ROOT.length + 1)} is not built (npx nx run-many -t build)`;
  test(`${name} starts Node with MALLOC_TUNABLES ahead of the caller's GLIBC_TUNABLES`, { skip }, () => {
    const first = readFileSync(built, 'utf8').split('\n')[0];
    assert.equal(first, SHEBANG, `${built.slice(ROOT.length + 1)}'s first line`);
    // The same first line, run by the system's env, gives Node these variables.
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-shebang-'));
    try {
      const script = join(dir, 'env.js');
      writeFileSync(script, `${first}\nconsole.log(JSON.stringify(process.env.GLIBC_TUNABLES ?? null));\n`);
      chmodSync(script, 0o755);
      const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
      delete env.GLIBC_TUNABLES;
      const plain = spawnSync(script, [], { encoding: 'utf8', env });
      assert.equal(plain.status, 0, plain.stderr);
      assert.equal(JSON.parse(plain.stdout), `${MALLOC_TUNABLES}:`);
      const own = spawnSync(script, [], { encoding: 'utf8', env: { ...env, GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0' } });
      assert.equal(JSON.parse(own.stdout), `${MALLOC_TUNABLES}:glibc.malloc.tcache_count=0`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('the npm scripts that train, and the GPU check, start Node with MALLOC_TUNABLES', () => {
  const scripts: Record<string, string> = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts;
  for (const name of ['vitreg', 'demo', 'bench']) {
    assert.ok(scripts[name]?.startsWith(`GLIBC_TUNABLES=${MALLOC_TUNABLES}:$GLIBC_TUNABLES node `), `npm run ${name}: ${scripts[name]}`);
  }
  const gpuCheck = readFileSync(join(ROOT, 'scripts', 'gpu-check.sh'), 'utf8');
  assert.ok(
    gpuCheck.includes(`\nexport GLIBC_TUNABLES="${MALLOC_TUNABLES}\${GLIBC_TUNABLES:+:$GLIBC_TUNABLES}"\n`),
    'scripts/gpu-check.sh exports them',
  );
});
