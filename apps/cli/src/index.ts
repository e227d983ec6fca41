export { CliError, type Command } from './cli.js';
export { commands } from './commands/index.js';
