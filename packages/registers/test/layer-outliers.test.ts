import { test } from 'node:test';
import assert from 'node:assert/strict';
import { detectOutliers } from '../src/outliers.js';
import { layerOutlierShares } from '../src/layer-summary.js';

/** mulberry32: seeded uniform numbers in [0, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * 24 images x 5 blocks x 36 patches: every block's norms spread by +-15% around 20 x (1 + block / 4), and in
 * block 2 only, one patch per image (a different one each time) at 5x the others, a second mode of 1/36
 * of the tokens that the blocks after it no longer hold (as the paper's artifacts appear mid-network).
 */
function handMade(): { perImage: Float32Array[][]; planted: number[] } {
  const r = rng(11);
  const perImage: Float32Array[][] = [];
  const planted: number[] = [];
  for (let i = 0; i < 24; i++) {
    const layers: Float32Array[] = [];
    const hot = Math.floor(r() * 36);
    planted.push(hot);
    for (let l = 0; l < 5; l++) {
      const base = 20 * (1 + l / 4);
      const norms = Float32Array.from({ length: 36 }, () => base * (0.85 + 0.3 * r()));
      if (l === 2) norms[hot] = 5 * base * (0.95 + 0.1 * r());
      layers.push(norms);
    }
    perImage.push(layers);
  }
  return { perImage, planted };
}

test('layerOutlierShares: only the middle block with a second mode has outliers, exactly the planted tokens', () => {
  const { perImage, planted } = handMade();
  const shares = layerOutlierShares(perImage);
  assert.equal(shares.length, 5);
  for (const s of shares) {
    assert.equal(s.tokens, 24 * 36);
    if (s.layer === 2) {
      assert.equal(s.outliers, 24, `block 2: ${s.reason}`);
      assert.equal(s.share, 24 / (24 * 36));
      assert.ok(s.threshold !== null && s.threshold > 1.15 * 20 * 1.5 && s.threshold < 5 * 0.95 * 20 * 1.5, `threshold ${s.threshold}`);
      assert.ok(s.modeRatio > 3, `mode ratio ${s.modeRatio}`);
      // the outliers are the planted patches: every token above the threshold is one of them
      const above = perImage.map((layers) => Array.from(layers[2]).findIndex((v) => v > s.threshold!));
      assert.deepEqual(above, planted);
    } else {
      assert.equal(s.outliers, 0, `block ${s.layer}: ${s.reason}`);
      assert.equal(s.share, 0);
      assert.equal(s.threshold, null);
    }
    const all = perImage.flatMap((layers) => Array.from(layers[s.layer]));
    assert.equal(s.max, Math.max(...all));
  }
  // the last block alone (what analyze's outlier share looked at) shows nothing
  const last = detectOutliers(Float64Array.from(perImage.flatMap((layers) => Array.from(layers[4]))), null);
  assert.equal(last.indices.length, 0);
});

test('layerOutlierShares: no images, no blocks; images with different depths are an error naming them', () => {
  assert.deepEqual(layerOutlierShares([]), []);
  const a = [Float32Array.of(1, 2), Float32Array.of(1, 2)];
  assert.throws(() => layerOutlierShares([a, [a[0]]]), /image 1 has 1 blocks, image 0 has 2/);
});
