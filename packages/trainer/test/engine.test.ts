/**
 * The step-engine seam: the loop drives any StepEngine (here the tfjs engine behind a recording
 * wrapper) in the documented order, gradients and means travel as flat host buffers in the engine's
 * parameter order, and the named state moves between engines unchanged.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateTrainConfig } from '../src/config-validate.js';
import type { EngineFactory, StepEngine } from '../src/engine.js';
import { train, Trainer } from '../src/loop.js';
import { LocalGradientSync, type GradientSync } from '../src/sync.js';
import { tfjsEngine } from '../src/tfjs-engine.js';
import { useWasm } from './helpers.js';

before(useWasm);

const tiny = {
  preset: 'tiny-dino',
  model: { arch: 'vit_micro_patch8_reg4', depth: 2 },
  data: { source: 'synthetic', train_size: 16, val_size: 8 },
  train: { steps: 2, batch_size: 4, eval_every: 0, checkpoint_every: 0, knn_train_size: 8 },
};

/** An engine that records the loop's calls and delegates them to the tfjs engine. */
function recording(calls: string[]): EngineFactory {
  return (ctx) => {
    const inner = tfjsEngine(ctx);
    const engine: StepEngine = {
      name: 'recording',
      get parameters() {
        return inner.parameters;
      },
      initTeacher: () => {
        calls.push('initTeacher');
        inner.initTeacher();
      },
      computeStep: async (batch, settings, sync) => {
        calls.push(`compute ${settings.step}`);
        const r = await inner.computeStep(batch, settings, sync);
        assert.equal(r.gradients.length, inner.parameters.length);
        r.gradients.forEach((g, i) => assert.equal(g.length, inner.parameters[i]!.size, inner.parameters[i]!.name));
        assert.deepEqual(r.update.centres, r.means.length === 2 ? ['dino', 'ibot'] : ['dino']);
        return r;
      },
      applyStep: async (step, settings) => {
        calls.push(`apply ${settings.step}`);
        return inner.applyStep(step, settings);
      },
      encode: (...a) => inner.encode(...a),
      classify: (...a) => inner.classify(...a),
      teacherProbs: (...a) => inner.teacherProbs(...a),
      stateLayout: () => inner.stateLayout(),
      exportState: () => {
        calls.push('export');
        return inner.exportState();
      },
      importState: (s) => {
        calls.push('import');
        inner.importState(s);
      },
      checksum: () => inner.checksum(),
      memory: () => inner.memory(),
      dispose: () => inner.dispose(),
    };
    return engine;
  };
}

/** A world-size-1 sync that records its collectives. */
function recordingSync(calls: string[]): GradientSync {
  const local = new LocalGradientSync();
  return {
    rank: 0,
    worldSize: 1,
    allReduce: async (buffers) => {
      calls.push(`allReduce ${buffers.length}`);
      return local.allReduce(buffers);
    },
    broadcast: (s, m) => local.broadcast(s, m),
    commitStep: async (step, values) => {
      calls.push(`commit ${step}`);
      return local.commitStep(step, values);
    },
  };
}

test('the loop drives any StepEngine: compute, all-reduce of the host buffers, commit, apply; the tfjs weights', async () => {
  const out = await mkdtemp(join(tmpdir(), 'vitreg-engine-'));
  try {
    const cfg = validateTrainConfig(tiny);
    const calls: string[] = [];
    const opts = { progress: false, checksum: true };
    const a = await train(cfg, { ...opts, outDir: join(out, 'a'), engine: recording(calls), sync: recordingSync(calls) });
    const b = await train(cfg, { ...opts, outDir: join(out, 'b') });
    assert.equal(a.checksum, b.checksum);
    assert.deepEqual(a.eval, b.eval);
    const probe = new Trainer(cfg);
    const buffers = probe.engine.parameters.length + 1; // gradients + the DINO centre's batch mean (no iBOT mean unless masked)
    probe.dispose();
    const steps = calls.filter((c) => !c.startsWith('export'));
    assert.equal(steps[0], 'initTeacher');
    for (const s of [0, 1]) {
      const at = steps.indexOf(`compute ${s}`);
      assert.ok(at > 0, `step ${s} computed`);
      assert.match(steps[at + 1]!, /^allReduce \d+$/);
      assert.ok(Number(steps[at + 1]!.split(' ')[1]) >= buffers);
      assert.equal(steps[at + 2], `commit ${s + 1}`);
      assert.equal(steps[at + 3], `apply ${s}`);
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});

test('engine state: documented names, and exported from one engine it loads into another to the same weights', async () => {
  const cfg = validateTrainConfig(tiny);
  const one = new Trainer(cfg);
  const two = new Trainer(validateTrainConfig({ ...tiny, train: { ...tiny.train, seed: 9 } }));
  try {
    one.initTeacher();
    await one.trainStep();
    const layout = one.engine.stateLayout();
    const names = Object.keys(layout);
    for (const prefix of ['student.backbone.', 'student.dino_head.', 'teacher.backbone.', 'teacher.dino_head.', 'optimizer.backbone.']) {
      assert.ok(
        names.some((n) => n.startsWith(prefix)),
        `a state name starts with ${prefix}`,
      );
    }
    assert.deepEqual(
      names.filter((n) => n.startsWith('center.')),
      ['center.dino', 'center.ibot'],
    );
    assert.ok(names.includes('student.backbone.mask_token'));
    assert.ok(names.includes('optimizer.backbone.mask_token.exp_avg'), 'iBOT trains the mask token');
    assert.notEqual(await two.checksum(), await one.checksum());
    two.engine.importState(one.engine.exportState());
    assert.equal(await two.checksum(), await one.checksum());
    assert.deepEqual(Object.keys(two.engine.exportState().tensors), names);
    assert.throws(() => two.engine.importState({ tensors: {}, optimizerStep: 1 }), /missing or mis-sized tensor "student\.backbone\./);
  } finally {
    one.dispose();
    two.dispose();
  }
});
