/**
 * Which ONNX Runtime settings an engine factory stands for, so that the `clip` objective (clip-loop.ts, a
 * loop of its own that runs the ONNX Runtime graphs of clip-graphs.ts rather than a StepEngine) can train
 * on the engine a command resolved: `resolveTrainEngine` (engine-select.ts) registers each ONNX Runtime
 * factory it makes with its device, threads and onnxruntime-node module; clip-loop.ts looks the run's
 * factory up. A factory made elsewhere is not known here (see clip-loop.ts's refusal line).
 */
import type { EngineFactory } from '../engine.js';
import type { SessionSettings } from './engine-sessions.js';

const known = new WeakMap<EngineFactory, SessionSettings>();

/** Records that `factory` trains on ONNX Runtime with `settings`; returns the factory. */
export function registerOnnxFactory(factory: EngineFactory, settings: SessionSettings): EngineFactory {
  known.set(factory, { ...settings });
  return factory;
}

/** The ONNX Runtime settings of a registered factory, or null. */
export function onnxFactorySettings(factory: EngineFactory): SessionSettings | null {
  return known.get(factory) ?? null;
}
