/** Every command answers --help, and the top-level help lists them all. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { commands } from '../src/commands/index.ts';
import { vitreg } from './helpers.ts';

test('vitreg --help lists every command and each command has a usage', async () => {
  const top = await vitreg(['--help']);
  assert.equal(top.code, 0);
  for (const name of ['features', 'convert', 'analyze', 'train', 'probe', 'discover', 'demo']) {
    assert.ok(commands[name], `command ${name} is registered`);
    assert.match(top.stdout, new RegExp(`^  ${name} `, 'm'));
  }
  const helps = await Promise.all(Object.keys(commands).map((name) => vitreg([name, '--help'])));
  helps.forEach((r, i) => {
    const name = Object.keys(commands)[i];
    assert.equal(r.code, 0, name);
    assert.match(r.stdout, new RegExp(`Usage: vitreg ${name}`), name);
  });
  const unknown = await vitreg(['featurs']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command "featurs"; expected one of features, convert/);
});
