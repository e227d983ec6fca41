/**
 * Heads on top of the backbone: DINOv2's `DINOHead` (an MLP with GELU, L2 normalisation, then a
 * weight-normalised linear layer, `weight_norm(nn.Linear(bottleneck, K, bias=False))` with its scale
 * `weight_g` filled with 1 and trained, as dinov2/layers/dino_head.py) and a linear classifier for
 * supervised training. Weights are stored [in, out] like the backbone's, so every product is a plain 2-D matMul.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { Rng } from '@vitreg/core';
import { gelu, linear, matMul2d } from '@vitreg/registers';

export interface DinoHeadConfig {
  inDim: number;
  /** Number of prototypes K. */
  outDim: number;
  hiddenDim: number;
  bottleneckDim: number;
  /** Linear layers of the MLP (DINOv2: 3). */
  nlayers: number;
}

/** trunc_normal_(std) of timm / DINOv2: normal deviates redrawn outside [-2, 2] (absolute, as torch's default). */
function truncNormal(n: number, std: number, rng: Rng): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v: number;
    do v = rng.normal() * std;
    while (v < -2 || v > 2);
    out[i] = v;
  }
  return out;
}

function variable(values: Float32Array, shape: number[]): tf.Variable {
  return tf.tidy(() => tf.variable(tf.tensor(values, shape, 'float32'), true)); // (the initial tensor freed)
}

export class DinoHead {
  readonly params: Record<string, tf.Variable> = {};
  /** Names of the MLP's linear layers in order (`mlp.0`, `mlp.2`, ... as torch's Sequential; `mlp` for one layer). */
  private readonly layers: string[];

  constructor(
    readonly config: DinoHeadConfig,
    rng: Rng,
  ) {
    const { inDim, outDim, hiddenDim, bottleneckDim, nlayers } = config;
    if (!(Number.isInteger(nlayers) && nlayers >= 1)) throw new Error(`DinoHead: nlayers must be an integer >= 1, got ${nlayers}`);
    const dims = nlayers === 1 ? [inDim, bottleneckDim] : [inDim, ...Array(nlayers - 1).fill(hiddenDim), bottleneckDim];
    this.layers = nlayers === 1 ? ['mlp'] : Array.from({ length: nlayers }, (_, i) => `mlp.${2 * i}`);
    this.layers.forEach((name, i) => {
      this.params[`${name}.weight`] = variable(truncNormal(dims[i]! * dims[i + 1]!, 0.02, rng), [dims[i]!, dims[i + 1]!]);
      this.params[`${name}.bias`] = variable(new Float32Array(dims[i + 1]!), [dims[i + 1]!]);
    });
    // nn.Linear's default init U(-1/sqrt(in), 1/sqrt(in)) for the direction; the scale g starts at 1.
    const bound = 1 / Math.sqrt(bottleneckDim);
    const v = new Float32Array(bottleneckDim * outDim);
    for (let i = 0; i < v.length; i++) v[i] = (rng.float() * 2 - 1) * bound;
    // Stored [in, out] like every weight here; torch's weight_g is [out, 1], weight_v [out, in].
    this.params['last_layer.weight_g'] = variable(new Float32Array(outDim).fill(1), [1, outDim]);
    this.params['last_layer.weight_v'] = variable(v, [bottleneckDim, outDim]);
  }

  /** x [N, inDim] -> logits [N, outDim]. */
  forward(x: tf.Tensor2D): tf.Tensor2D {
    return tf.tidy(() => {
      let h: tf.Tensor2D = x;
      this.layers.forEach((name, i) => {
        h = linear(h, this.params[`${name}.weight`]!, this.params[`${name}.bias`]!);
        if (i < this.layers.length - 1) h = gelu(h);
      });
      h = tf.div(h, tf.maximum(tf.norm(h, 'euclidean', 1, true), 1e-12)) as tf.Tensor2D;
      const v = this.params['last_layer.weight_v']!;
      // weight_norm: each output unit's weight vector (a column here) is g * v / ||v||.
      const w = tf.mul(tf.div(v, tf.norm(v, 'euclidean', 0, true)), this.params['last_layer.weight_g']!) as tf.Tensor2D;
      return matMul2d(h, w);
    });
  }

  dispose(): void {
    for (const v of Object.values(this.params)) v.dispose();
  }
}

/** Linear classifier on the CLS token: `head.weight` [D, C] (trunc-normal 0.02), `head.bias` zeros. */
export class ClassifierHead {
  readonly params: Record<string, tf.Variable>;

  constructor(
    readonly inDim: number,
    readonly numClasses: number,
    rng: Rng,
  ) {
    this.params = {
      weight: variable(truncNormal(inDim * numClasses, 0.02, rng), [inDim, numClasses]),
      bias: variable(new Float32Array(numClasses), [numClasses]),
    };
  }

  forward(x: tf.Tensor2D): tf.Tensor2D {
    return linear(x, this.params.weight!, this.params.bias!);
  }

  dispose(): void {
    for (const v of Object.values(this.params)) v.dispose();
  }
}
