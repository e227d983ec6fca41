/** Every command answers --help, and the top-level help lists them all. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { commands } from '../src/commands/index.ts';
import { vitreg } from './helpers.ts';

const BACKEND_COMMANDS = ['features', 'analyze', 'train', 'probe', 'discover', 'demo'];

function assertBackendHelp(name: string, help: string): void {
  assert.match(help, /^ {2}--gpu N +the webgpu backend's adapter \(default \$VITREG_GPU, else 0\)/m, `${name}: --gpu N`);
  const backendLine = help.split('\n').find((l) => /^ {2}--backend B /.test(l));
  assert.ok(backendLine, `${name}: a --backend B line`);
  for (const b of ['tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'])
    assert.match(backendLine, new RegExp(`\\b${b}\\b`), `${name}: --backend lists ${b}`);
}

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
    // Commands that start a tfjs backend name webgpu among the backends and document --gpu N (issue 13).
    if (BACKEND_COMMANDS.includes(name)) assertBackendHelp(name, r.stdout);
  });
  const find = await vitreg(['registers', 'find', '--help']);
  assert.equal(find.code, 0);
  assertBackendHelp('registers find', find.stdout);
  const unknown = await vitreg(['featurs']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command "featurs"; expected one of features, convert/);
});
