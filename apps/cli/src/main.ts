#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:${GLIBC_TUNABLES} node
/**
 * The vitreg command. Each subcommand lives in ./commands/<name>.ts and is listed in ./commands/table.ts
 * (its summary, and its module, imported only when the command runs, so that `vitreg --help` or one
 * command does not load every package) and in ./commands/index.ts (all loaded, for the package's API).
 * The first line starts Node with @vitreg/core's MALLOC_TUNABLES (glibc keeps the ONNX Runtime engine's
 * freed activations for the next step instead of faulting them in again); test/bins.test.ts checks it.
 */
import { commandTable } from './commands/table.js';

function help(): string {
  const lines = ['Usage: vitreg <command> [options]', '', 'Commands:'];
  const width = Math.max(...Object.keys(commandTable).map((k) => k.length));
  for (const [name, cmd] of Object.entries(commandTable)) lines.push(`  ${name.padEnd(width)}  ${cmd.summary}`);
  lines.push('', 'Run `vitreg <command> --help` for the options of one command.');
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(help() + '\n');
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') {
    process.stdout.write('0.1.0\n');
    return 0;
  }
  const entry = Object.hasOwn(commandTable, name) ? commandTable[name] : undefined;
  if (!entry) {
    process.stderr.write(`vitreg: unknown command "${name}"; expected one of ${Object.keys(commandTable).join(', ')}\n`);
    return 2;
  }
  const cmd = await entry.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(cmd.usage.trim() + '\n');
    return 0;
  }
  try {
    const code = await cmd.run(rest);
    return typeof code === 'number' ? code : 0;
  } catch (err) {
    // Loaded with the command's module already.
    const [{ InputError }, { CliError }] = await Promise.all([import('@vitreg/core'), import('./cli.js')]);
    // A usage error: a flag, or an input a package refused (commands turn those into CliErrors; any
    // InputError that gets here is one too).
    if (err instanceof CliError || err instanceof InputError) {
      process.stderr.write(`vitreg ${name}: ${err.message}\n`);
      return err instanceof CliError ? err.exitCode : 2;
    }
    const e = err as Error;
    process.stderr.write(`vitreg ${name}: ${e?.message ?? String(err)}\n`);
    if (process.env.VITREG_DEBUG) process.stderr.write(`${e?.stack ?? ''}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`vitreg: ${(err as Error)?.message ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
