/**
 * `npm run bench -- <case> [flags]`: speed and memory benchmarks. Each case lives in ./<case>.ts,
 * exports `run(argv: string[]): Promise<void>` and prints one JSON line per measured case on stdout.
 */
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const cases = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'main.ts' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .sort();

const [name, ...rest] = process.argv.slice(2);
if (!name || name === '--help' || !cases.includes(name)) {
  const out = name && name !== '--help' ? process.stderr : process.stdout;
  out.write(`Usage: npm run bench -- <case> [flags]\nCases: ${cases.join(', ')}\n`);
  process.exit(name && name !== '--help' ? 2 : 0);
}
const mod = (await import(join(here, `${name}.ts`))) as { run(argv: string[]): Promise<void> };
await mod.run(rest);
