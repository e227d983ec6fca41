import type { Command } from '../cli.js';

/** Every vitreg subcommand, in the order `vitreg --help` lists them. */
export const commands: Record<string, Command> = {};
