/**
 * The README names every vitreg command and no other (issue 23): its Commands table, its packages
 * table's `vitreg` row and apps/cli/package.json's description list exactly the commands of
 * commands/index.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { commands } from '../src/commands/index.ts';
import { ROOT } from './helpers.ts';

const names = Object.keys(commands).sort();
const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');

test("README.md's Commands table lists exactly the commands of commands/index.ts", () => {
  const section = readme.split(/^## Commands$/m)[1]!.split(/^## /m)[0]!;
  const rows = [...section.matchAll(/^\| `vitreg (\w[\w-]*)[^`]*` \|/gm)].map((m) => m[1]!);
  assert.ok(rows.length > 0, 'a Commands table');
  assert.deepEqual([...rows].sort(), names);
});

test("the packages table's vitreg row and apps/cli/package.json's description name every command", () => {
  const row = readme.split('\n').find((l) => l.startsWith('| [`vitreg`](apps/cli) |'));
  assert.ok(row, 'a packages-table row for vitreg');
  assert.deepEqual(
    [...row.matchAll(/`(\w[\w-]*)`/g)]
      .map((m) => m[1]!)
      .filter((n) => n !== 'vitreg')
      .sort(),
    names,
  );
  const description = JSON.parse(readFileSync(join(ROOT, 'apps', 'cli', 'package.json'), 'utf8')).description as string;
  const listed = description
    .replace(/^[^:]*:/, '')
    .split(',')
    .map((s) => s.trim());
  assert.deepEqual([...listed].sort(), names);
});
