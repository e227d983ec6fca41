/**
 * The table the vitreg executable starts from (commands/table.ts: summaries, modules loaded on use)
 * names the commands of commands/index.ts in the same order, with each module's own summary, and each
 * entry loads its command.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { commands } from '../src/commands/index.ts';
import { commandTable } from '../src/commands/table.ts';

test("commandTable: the commands of commands/index.ts in order, each summary its module's, each load its command", async () => {
  assert.deepEqual(Object.keys(commandTable), Object.keys(commands));
  for (const [name, entry] of Object.entries(commandTable)) {
    assert.equal(entry.summary, commands[name]!.summary, `${name}: the summary of its module`);
    assert.equal(await entry.load(), commands[name], `${name}: load() gives its command`);
  }
});
