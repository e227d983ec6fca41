/**
 * `npm run bench -- checkpoint-rss [--preset dinov2-l14-reg4] [--into engine|new] [--keep]`
 *
 * Peak RSS of a checkpoint's save and load for a preset's whole training state as the ONNX Runtime engine
 * holds it (issue 16): student and teacher (backbone and heads) in two flat buffers, the AdamW moments in
 * two more, handed to saveTrainingState as views (what `exportState` hands out). The load reads the
 * checkpoint back as a resume does: `--into engine` (the default) straight into the same buffers
 * (readTrainingStateInto, what the engine's `stateTargets` give restoreTrainingState), `--into new` into
 * new arrays that are then copied into the buffers (loadTrainingState + an import: the path of an engine
 * without targets). The conversion to and from the file's layouts runs on host arrays (no tfjs model, no
 * wasm heap). Prints one JSON line: the state's size, RSS after allocating it, the peak (VmHWM) after the
 * save, RSS before the load (garbage collected), the load's own peak (the peak is reset before it through
 * /proc/self/clear_refs; `peak_reset` false where that fails: then the process's peak), their seconds, and
 * the checkpoint's bytes on disk. The checkpoint is written
 * to a temporary folder and removed (unless --keep).
 */
import { writeFileSync } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  loadTrainingState,
  modelConfig,
  readTrainingStateInto,
  saveTrainingState,
  validateTrainConfig,
  type EngineState,
  type StateLayout,
} from '@vitreg/trainer';
import { ParamLayout } from '../packages/trainer/src/onnx/engine-params.js';

const GiB = 1024 ** 3;

function rssNow(): number {
  return process.memoryUsage.rss();
}

/** Peak RSS of this process so far (getrusage's maxrss, bytes). */
function rssPeak(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/** Collects garbage (the save's transposed copies) so that the load starts from the state alone. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

/** Resets the peak RSS to the current RSS (Linux: /proc/self/clear_refs); false where it cannot. */
function resetPeak(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string', default: 'dinov2-l14-reg4' },
      into: { type: 'string', default: 'engine' },
      keep: { type: 'boolean' },
    },
  });
  if (values.into !== 'engine' && values.into !== 'new')
    throw new Error(`checkpoint-rss: --into must be engine or new, got "${values.into}"`);
  const config = validateTrainConfig({ preset: values.preset });
  const vit = modelConfig(config);
  const layout = new ParamLayout({ config, vit, numClasses: 1000 });
  const self = config.objective !== 'supervised';
  const stateLayout: StateLayout = {};
  const tensors: Record<string, Float32Array> = {};
  // The engine's buffers, every page touched (a value per tensor, so a mix-up shows in the check below).
  const fill = (a: Float32Array, salt: number) => {
    for (let i = 0; i < a.length; i += 1024) a[i] = (i % 9973) * 1e-4 + salt;
    return a;
  };
  const student = fill(new Float32Array(layout.total), 1);
  const teacher = self ? fill(new Float32Array(layout.total), 2) : undefined;
  const m = fill(new Float32Array(layout.gradTotal), 3);
  const v = fill(new Float32Array(layout.gradTotal), 4);
  for (const s of layout.segments) {
    stateLayout[`student.${s.name}`] = [...s.shape];
    tensors[`student.${s.name}`] = layout.view(student, s.name);
    if (teacher) {
      stateLayout[`teacher.${s.name}`] = [...s.shape];
      tensors[`teacher.${s.name}`] = layout.view(teacher, s.name);
    }
  }
  for (const p of layout.trained) {
    for (const [k, buf] of [
      ['exp_avg', m],
      ['exp_avg_sq', v],
    ] as const) {
      stateLayout[`optimizer.${p.name}.${k}`] = [...p.shape];
      tensors[`optimizer.${p.name}.${k}`] = layout.gradView(buf, p);
    }
  }
  const state: EngineState = { tensors, optimizerStep: 1 };
  const stateBytes = 4 * (layout.total * (teacher ? 2 : 1) + 2 * layout.gradTotal);
  const afterAlloc = rssNow();
  const root = join(tmpdir(), `vitreg-ckrss-${process.pid}`);
  const train = { step: 1, epoch: 0, cursor: 0, config, world_size: 1 };
  try {
    let t = process.hrtime.bigint();
    const dir = await saveTrainingState(root, vit, stateLayout, state, train);
    const saveS = Number(process.hrtime.bigint() - t) / 1e9;
    const saved = { peak: rssPeak(), now: rssNow() };
    let diskBytes = 0;
    for (const f of await readdir(dir)) diskBytes += (await stat(join(dir, f))).size;
    // The load's own peak: from the state alone (the save's garbage collected, the peak reset where Linux allows).
    collectGarbage();
    const beforeLoad = rssNow();
    const reset = resetPeak();
    // Every tensor's first and last values, then overwritten with NaN: the load must bring them back.
    const sample = Object.entries(tensors).map(([name, a]) => [name, a[0], a[a.length - 1]] as const);
    for (const a of Object.values(tensors)) a[0] = a[a.length - 1] = NaN;
    t = process.hrtime.bigint();
    if (values.into === 'engine') await readTrainingStateInto(dir, config, vit, tensors);
    else {
      const loaded = await loadTrainingState(dir, config, vit, stateLayout);
      for (const [name, a] of Object.entries(tensors)) a.set(loaded.state.tensors[name]!);
    }
    const loadS = Number(process.hrtime.bigint() - t) / 1e9;
    const loadPeak = rssPeak();
    for (const [name, first, last] of sample) {
      const a = tensors[name]!;
      if (a[0] !== first || a[a.length - 1] !== last) throw new Error(`checkpoint-rss: ${name} did not round-trip`);
    }
    const line = {
      case: 'checkpoint-rss',
      preset: values.preset,
      into: values.into,
      params_student: layout.total,
      state_gib: +(stateBytes / GiB).toFixed(2),
      checkpoint_gib: +(diskBytes / GiB).toFixed(2),
      rss_after_alloc_gib: +(afterAlloc / GiB).toFixed(2),
      peak_after_save_gib: +(saved.peak / GiB).toFixed(2),
      rss_after_save_gib: +(saved.now / GiB).toFixed(2),
      rss_before_load_gib: +(beforeLoad / GiB).toFixed(2),
      // with the peak reset: the load's own peak; else the process's (the save's included)
      peak_after_load_gib: +(loadPeak / GiB).toFixed(2),
      peak_reset: reset,
      save_s: +saveS.toFixed(1),
      load_s: +loadS.toFixed(1),
    };
    process.stdout.write(JSON.stringify(line) + '\n');
  } finally {
    if (!values.keep) await rm(root, { recursive: true, force: true });
  }
}
