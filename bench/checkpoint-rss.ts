/**
 * `npm run bench -- checkpoint-rss [--preset dinov2-l14-reg4] [--keep]`
 *
 * Peak RSS of a checkpoint's save and load for a preset's whole training state as the ONNX Runtime engine
 * holds it (issue 16): student and teacher (backbone and heads) in two flat buffers, the AdamW moments in
 * two more, handed to saveTrainingState / loadTrainingState as views (what `exportState` hands out). The
 * conversion to and from the file's layouts runs on host arrays (no tfjs model, no wasm heap).
 * Prints one JSON line: the state's size, RSS after allocating it, the peak (VmHWM) after the save and
 * after the load, their seconds, and the checkpoint's bytes on disk. The checkpoint is written to a
 * temporary folder and removed (unless --keep).
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  loadTrainingState,
  modelConfig,
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

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { preset: { type: 'string', default: 'dinov2-l14-reg4' }, keep: { type: 'boolean' } },
  });
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
    t = process.hrtime.bigint();
    const loaded = await loadTrainingState(dir, config, vit, stateLayout);
    const loadS = Number(process.hrtime.bigint() - t) / 1e9;
    const loadPeak = rssPeak();
    // Every tensor came back (spot check: the first value of each).
    for (const [name, a] of Object.entries(tensors)) {
      if (loaded.state.tensors[name]?.[0] !== a[0]) throw new Error(`checkpoint-rss: ${name} did not round-trip`);
    }
    const line = {
      case: 'checkpoint-rss',
      preset: values.preset,
      params_student: layout.total,
      state_gib: +(stateBytes / GiB).toFixed(2),
      checkpoint_gib: +(diskBytes / GiB).toFixed(2),
      rss_after_alloc_gib: +(afterAlloc / GiB).toFixed(2),
      peak_after_save_gib: +(saved.peak / GiB).toFixed(2),
      rss_after_save_gib: +(saved.now / GiB).toFixed(2),
      peak_after_load_gib: +(loadPeak / GiB).toFixed(2),
      save_s: +saveS.toFixed(1),
      load_s: +loadS.toFixed(1),
    };
    process.stdout.write(JSON.stringify(line) + '\n');
  } finally {
    if (!values.keep) await rm(root, { recursive: true, force: true });
  }
}
