/**
 * ClipLoss and SigLipLoss against open_clip's (fixtures/clip-loss, written by make_clip_loss.py: open_clip's
 * loss.py on 1 rank with the global batch of 6 and on 2 ranks of 3 through torch.distributed): each rank's
 * loss and the gradients on its features, log(logit_scale) and logit_bias, within allclose(1e-5, 1e-4); the
 * mean over 2 ranks equals 1 rank's loss and gradients (data-parallel equivalence).
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '@vitreg/core';
import { contrastiveStep, LocalGradientSync } from '../src/index.ts';
import { pairSyncs } from './clip-helpers.ts';

const FIX = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'clip-loss', 'clip_loss_reference.json');

interface RankRef {
  loss: number;
  grad_image: number[][];
  grad_text: number[][];
  grad_log_scale: number;
  grad_bias?: number;
}

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, atol = 1e-5, rtol = 1e-4): void {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < actual.length; i++) {
    assert.ok(Math.abs(actual[i]! - expected[i]!) <= atol + rtol * Math.abs(expected[i]!), `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

describe('contrastive losses vs open_clip', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });

  for (const kind of ['clip', 'siglip'] as const) {
    test(`${kind}: 1 rank (batch 6) and 2 ranks (3 each): losses and gradients`, async () => {
      const ref = JSON.parse(await readFile(FIX, 'utf8'));
      const { batch_per_rank: B, dim: E, world: W, log_scale: s, bias } = ref;
      const img = Float32Array.from(ref.image.flat());
      const txt = Float32Array.from(ref.text.flat());
      const check = (got: Awaited<ReturnType<typeof contrastiveStep>>, want: RankRef, what: string) => {
        close([got.loss], [want.loss], `${what} loss`);
        close(got.gradImage, want.grad_image.flat(), `${what} grad image`);
        close(got.gradText, want.grad_text.flat(), `${what} grad text`);
        close([got.gradLogScale], [want.grad_log_scale], `${what} grad log scale`);
        if (kind === 'siglip') close([got.gradBias], [want.grad_bias!], `${what} grad bias`);
      };
      const one = await contrastiveStep(kind, img, txt, E, s, bias, new LocalGradientSync());
      check(one, ref.one_rank[kind], '1 rank');
      const syncs = pairSyncs(W);
      const ranks = await Promise.all(
        syncs.map((sync, r) =>
          contrastiveStep(kind, img.slice(r * B * E, (r + 1) * B * E), txt.slice(r * B * E, (r + 1) * B * E), E, s, bias, sync),
        ),
      );
      ranks.forEach((got, r) => check(got, ref.two_ranks[r][kind], `rank ${r}`));
      // Data-parallel equivalence: the mean over the ranks (what DDP / allReduce averages) is one rank's.
      close([(ranks[0]!.loss + ranks[1]!.loss) / 2], [one.loss], 'mean loss');
      close([(ranks[0]!.gradLogScale + ranks[1]!.gradLogScale) / 2], [one.gradLogScale], 'mean grad log scale');
      const joined = new Float32Array([...ranks[0]!.gradImage, ...ranks[1]!.gradImage].map((v) => v / W));
      close(joined, one.gradImage, 'feature gradients / W');
    });
  }
});
