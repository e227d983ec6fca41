import type { Command } from '../cli.js';
import { analyze } from './analyze.js';
import { convert } from './convert.js';
import { demo } from './demo.js';
import { discover } from './discover.js';
import { exportCommand } from './export.js';
import { features } from './features.js';
import { probe } from './probe.js';
import { registersCommand } from './registers.js';
import { sweepCommand } from './sweep.js';
import { trainCommand } from './train.js';

/** Every vitreg subcommand, in the order `vitreg --help` lists them. */
export const commands: Record<string, Command> = {
  features,
  convert,
  export: exportCommand,
  analyze,
  train: trainCommand,
  probe,
  discover,
  registers: registersCommand,
  sweep: sweepCommand,
  demo,
};
