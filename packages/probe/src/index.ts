/** @vitreg/probe: the public API (see README.md). */
export { bestIou, boxIou, corloc, isHit, scaleBox } from './corloc.js';
export type { CorLoc } from './corloc.js';
export { evaluateDepth, trainDepthHead } from './dense-depth.js';
export { denseBatch, resizeBilinearTf } from './dense-features.js';
export type { DenseFeatures } from './dense-features.js';
export { denseBlocks, extractDenseFeatures, runDenseProbe } from './dense-run.js';
export type { DensePart, DenseProbeReport } from './dense-run.js';
export { evaluateSegmentation, trainSegmentationHead } from './dense-segmentation.js';
export { openDenseSource } from './dense-source.js';
export { datasetItemNames, datasetSource, fileSource, runDiscovery, tensorSource } from './discover-run.js';
export type { DiscoverSource, DiscoveryRunOptions } from './discover-run.js';
export { discoverBatch, discoverEncoded, discoveryRecord } from './discover.js';
export type { DiscoveryRecord } from './discover.js';
export { drawDiscovery, lineChart } from './draw.js';
export { lostFeatures, prepareInput, TOKEN_CHOICES } from './extract.js';
export type { InputGeometry, ModelInput } from './extract.js';
export { knnClassify, l2NormalizeRows, topK } from './knn.js';
export type { KnnOptions, KnnResult } from './knn.js';
export { accuracy, classificationProbe, positionMetrics, regressionErrors, regressionProbe } from './linear.js';
export {
  affinity,
  affinityHost,
  componentBox,
  degrees,
  expandSeed,
  lost,
  LOST_K_PATCHES,
  lostFromAffinity,
  lowestDegreeOrder,
  scoreMask,
  seedComponent,
  seedScores,
} from './lost.js';
export { openProbeSource } from './probe-source.js';
export { runProbeSweep } from './probe-sweep.js';
export type { ProbeSweepOptions, ProbeSweepResult, SweepTask } from './probe-sweep.js';
export { isDenseTask, runProbeTask } from './probe-task.js';
export type { ProbeTaskOptions, ProbeTaskResult } from './probe-task.js';
export { ALL_PROBE_TASKS, runProbe } from './run.js';
export type { AnyProbeTask, DataPart, ProbeModel, ProbeReport } from './run.js';
export { SWEEP_PLOT_METRICS, sweepColumns, toCsv, writeSweep } from './sweep.js';
export {
  buildZeroShotClassifier,
  CLIP_MEAN,
  CLIP_STD,
  fillTemplate,
  parseLines,
  topKAccuracy,
  zeroShotEval,
  zeroShotLogits,
} from './zeroshot.js';
export type { ZeroShotResult } from './zeroshot.js';
export { IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES } from './zeroshot-metadata.js';
export { clipImageBatches, runZeroShot, runZeroShotTask, ZeroShotInputError } from './zeroshot-run.js';
export type { ZeroShotRunOptions, ZeroShotTaskOptions, ZeroShotTaskReport } from './zeroshot-run.js';
