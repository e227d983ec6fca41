/**
 * tfjs-core's Node bundle defines no gradient functions: the union package `@tensorflow/tfjs` registers
 * them (in the global registry every tfjs copy shares), and tfjs-node depends on it too. Loaded lazily,
 * once, because it costs about half a second; `initBackend` calls this.
 */
import * as tf from '@tensorflow/tfjs-core';

let loading: Promise<void> | null = null;

export function ensureGradients(): Promise<void> {
  if (tf.getGradient('BatchMatMul') !== undefined) return Promise.resolve();
  loading ??= import('@tensorflow/tfjs').then(
    () => {
      if (tf.getGradient('BatchMatMul') === undefined) throw new Error('@tensorflow/tfjs loaded but registered no gradients');
    },
    (err: Error) => {
      loading = null;
      throw new Error(`cannot load the tfjs gradient functions from @tensorflow/tfjs (npm i @tensorflow/tfjs): ${err.message}`);
    },
  );
  return loading;
}
