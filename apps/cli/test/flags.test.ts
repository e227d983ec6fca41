/**
 * Flag errors (issue 23): every missing and invalid flag of a run in one line before any work, a
 * negative number taken as a flag's value, unknown flags with the flag they may mean. The parser is
 * tested in-process; two runs check the line a user sees.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CliError, parseFlags } from '../src/cli.ts';
import { commands } from '../src/commands/index.ts';
import { vitreg } from './helpers.ts';

const OPTIONS = {
  weights: { type: 'string', multiple: true },
  steps: { type: 'string' },
  out: { type: 'string' },
  resume: { type: 'boolean' },
} as const;

test('parseFlags: values, positionals, negative numbers as values, repeated flags', () => {
  const f = parseFlags('x', ['a.png', '--steps', '-3', '--weights', 'w1', '--weights=w2', '--resume', '--', '--not-a-flag'], OPTIONS);
  assert.equal(f.ok, true);
  assert.deepEqual(f.values, { steps: '-3', weights: ['w1', 'w2'], resume: true });
  assert.deepEqual(f.positionals, ['a.png', '--not-a-flag']);
  assert.equal(f.int('steps', 1), 1);
  assert.equal(f.message(), '--steps: expected an integer >= 1, got "-3"');
});

test('parseFlags collects every problem and done() throws them in one line', () => {
  const f = parseFlags('x', ['--wieghts', 'w', '--resume=yes', '--steps', 'many', '--out'], OPTIONS);
  f.int('steps', 1);
  f.require('weights', '--weights FILE is required'); // the typo above said it already
  f.require('out', '--out DIR is required');
  assert.throws(
    () => f.done(),
    (err: Error) => {
      assert.ok(err instanceof CliError);
      assert.equal(err.exitCode, 2);
      assert.equal(
        err.message,
        "Unknown option '--wieghts' (did you mean --weights?); --resume takes no value, got --resume=yes; --out: a value is missing; " +
          '--steps: expected an integer >= 1, got "many"; --out DIR is required (see vitreg x --help)',
      );
      return true;
    },
  );
  // A value that is a flag: missing, with the = form for a value that really starts with '-'.
  const g = parseFlags('x', ['--out', '--resume'], OPTIONS);
  assert.equal(
    g.message(),
    "--out: a value is missing (got --resume; a value starting with '-' needs the = form, e.g. --out=--resume) (see vitreg x --help)",
  );
});

test('vitreg probe --task bogus names every missing flag and the bad task at once, before any work', async () => {
  await assert.rejects(commands.probe!.run(['--task', 'bogus']), (err: Error) => {
    assert.ok(err instanceof CliError);
    for (const part of [
      '--weights FILE is required',
      '--data DIR|synthetic is required',
      '--out DIR is required',
      '--task: expected one of',
    ])
      assert.ok(err.message.includes(part), `${part} in: ${err.message}`);
    assert.match(err.message, /got "bogus" \(see vitreg probe --help\)$/);
    return true;
  });
  const r = await vitreg(['train', '--preset', 'tiny-supervised', '--steps', '-3', '--workers', '0', '--print-config']);
  assert.equal(r.code, 2);
  assert.equal(
    r.stderr.trim(),
    'vitreg train: --workers: expected an integer >= 1, got "0"; --steps: expected an integer >= 1, got "-3" (see vitreg train --help)',
  );
  assert.equal(r.stdout, '');
});
