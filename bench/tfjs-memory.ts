/**
 * `npm run bench -- tfjs-memory [--case NAME,...]`
 * The tfjs engine's memory check against what a step really takes on the wasm backend: each case runs in
 * a process of its own (bench/_tfjs-memory-case.ts), which computes the check's estimate
 * (`checkTrainingFits`, with the limit lifted so that the step runs whatever it says), trains one step on
 * a fresh wasm backend and reads the heap after it (wasm's heap only grows: its size is the step's peak,
 * rounded up to the allocator's growth). One JSON line per case: heap_gib (null when the step ran out of
 * the 4 GiB heap, with its error), estimate_gib, and whether the check as shipped would refuse it.
 * Cases (224 px; DINO with 8 local crops at 98 and DINOv2's ratios): sup-s16-b{4,8,16,24}
 * (deit3_small_patch16_reg4), sup-b16-b2 (deit3_base_patch16_reg4), dino-s14-b{2,3,4} (small heads),
 * dino-s14-k16k-b{2,3} and dino-s14-k64k-b2 (hidden 2048, bottleneck 256, K prototypes, shared iBOT head);
 * the heads' share on a one-block ViT-micro/8 at 32 px: heads-k16k-b8, heads-k64k-b{4,8,16},
 * heads-k64k-b8-separate (a separate iBOT head).
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const sup = (arch: string, batch: number) => ({
  preset: 'tiny-supervised',
  model: { arch, img_size: 224, drop_path_rate: 0 },
  data: { source: 'synthetic', train_size: 32, val_size: 8 },
  train: { steps: 1, batch_size: batch, eval_every: 0, checkpoint_every: 0 },
  crops: { global_crops_size: 224 },
});
const dino = (batch: number, K?: number) => ({
  preset: 'tiny-dino',
  model: { arch: 'dinov2_vits14_reg', img_size: 224, drop_path_rate: 0 },
  data: { source: 'synthetic', train_size: 16, val_size: 8 },
  train: { steps: 1, batch_size: batch, eval_every: 0, checkpoint_every: 0, knn_train_size: 8 },
  crops: { global_crops_size: 224, local_crops_size: 98, local_crops_number: 8 },
  ...(K
    ? {
        dino: { head_n_prototypes: K, head_hidden_dim: 2048, head_bottleneck_dim: 256 },
        ibot: { head_n_prototypes: K, head_hidden_dim: 2048, head_bottleneck_dim: 256 },
      }
    : {}),
});

/** The heads' share: ViT-micro/8 (one block) at 32 px, 8 local crops, DINOv2's head sizes with K prototypes. */
const micro = (batch: number, K: number, separate = false) => {
  const heads = { head_n_prototypes: K, head_hidden_dim: 2048, head_bottleneck_dim: 256 };
  return {
    preset: 'tiny-dino',
    model: { arch: 'vit_micro_patch8_reg4', depth: 1, drop_path_rate: 0 },
    data: { source: 'synthetic', train_size: 32, val_size: 8 },
    train: { steps: 1, batch_size: batch, eval_every: 0, checkpoint_every: 0, knn_train_size: 8 },
    dino: heads,
    ibot: { ...heads, separate_head: separate },
    crops: { local_crops_number: 8 },
  };
};

const CASES: Record<string, object> = {
  'sup-s16-b4': sup('deit3_small_patch16_reg4', 4),
  'sup-s16-b8': sup('deit3_small_patch16_reg4', 8),
  'sup-s16-b16': sup('deit3_small_patch16_reg4', 16),
  'sup-s16-b24': sup('deit3_small_patch16_reg4', 24),
  'sup-b16-b2': sup('deit3_base_patch16_reg4', 2),
  'dino-s14-b2': dino(2),
  'dino-s14-b3': dino(3),
  'dino-s14-b4': dino(4),
  'dino-s14-k16k-b2': dino(2, 16384),
  'dino-s14-k16k-b3': dino(3, 16384),
  'dino-s14-k64k-b2': dino(2, 65536),
  'heads-k16k-b8': micro(8, 16384),
  'heads-k64k-b4': micro(4, 65536),
  'heads-k64k-b8': micro(8, 65536),
  'heads-k64k-b16': micro(16, 65536),
  'heads-k64k-b8-separate': micro(8, 65536, true),
};

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { case: { type: 'string', default: Object.keys(CASES).join(',') } } });
  for (const name of values.case.split(',')) {
    const config = CASES[name];
    if (!config) throw new Error(`tfjs-memory: no case "${name}"; cases: ${Object.keys(CASES).join(', ')}`);
    const line = await new Promise<string>((resolve, reject) => {
      const script = fileURLToPath(new URL('./_tfjs-memory-case.ts', import.meta.url));
      const child = fork(script, [name, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      child.on('error', reject);
      child.on('exit', (code, signal) => {
        const last = out.trim().split('\n').pop() ?? '';
        resolve(
          last.startsWith('{')
            ? last
            : JSON.stringify({ case: 'tfjs-memory', name, heap_gib: null, error: `exited with ${signal ?? code}` }),
        );
      });
    });
    process.stdout.write(line + '\n');
  }
}
