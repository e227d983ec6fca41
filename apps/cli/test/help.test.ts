/**
 * Every command answers --help, and the top-level help lists them all. The usages are read in-process
 * (each `vitreg <command> --help` process cost about a CPU-second); two processes check what main prints.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { commands } from '../src/commands/index.ts';
import { commandTable } from '../src/commands/table.ts';
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
  const [top, features, find, unknown] = await Promise.all([
    vitreg(['--help']),
    vitreg(['features', '--help']),
    vitreg(['registers', 'find', '--help']),
    vitreg(['featurs']),
  ]);
  assert.equal(top.code, 0);
  for (const name of ['features', 'convert', 'analyze', 'train', 'probe', 'discover', 'demo']) {
    assert.ok(commands[name], `command ${name} is registered`);
    assert.match(top.stdout, new RegExp(`^  ${name} `, 'm'));
  }
  for (const name of Object.keys(commands)) {
    // What `vitreg <name> --help` prints: the usage of the module the table loads.
    const usage = (await commandTable[name]!.load()).usage.trim();
    assert.match(usage, new RegExp(`Usage: vitreg ${name}`), name);
    // Commands that start a tfjs backend name webgpu among the backends and document --gpu N (issue 13).
    if (BACKEND_COMMANDS.includes(name)) assertBackendHelp(name, usage);
    if (name === 'features') {
      assert.equal(features.code, 0);
      assert.equal(features.stdout, `${usage}\n`);
    }
  }
  assert.equal(find.code, 0);
  assertBackendHelp('registers find', find.stdout);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command "featurs"; expected one of features, convert/);
});
