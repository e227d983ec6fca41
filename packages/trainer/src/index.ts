/** @vitreg/trainer: the public API (see README.md). */
export { gaussianBlur, pilGaussianBlur, randomGaussianBlur, randomPilGaussianBlur } from './augment-blur.js';
export {
  adjustBrightness,
  adjustContrast,
  adjustHue,
  adjustSaturation,
  colorJitter,
  grayscale,
  normalize,
  solarize,
} from './augment-colour.js';
export { hflip, randomResizedCrop, randomResizedCropBox, reflectPad, resizedCrop, simpleRandomCrop } from './augment-geometry.js';
export { DINOV2_BLUR_AS_RUN, DINOV2_BLUR_AS_WRITTEN, evalTransform, multiCrop, supervisedAugment } from './augment.js';
export { trainClipObjective } from './clip-loop.js';
export { CLIP_ONNX_REFUSAL, clipModelConfig, clipTokenizer, openCaptionData } from './clip-setup.js';
export { captionSource, trainClip, zeroShotTop1 } from './clip-train.js';
export type { CaptionSource, ClipTrainOptions } from './clip-train.js';
export { allGather, clipLoss, contrastiveStep, sigLipLoss } from './clip-loss.js';
export type { ContrastiveLoss, ContrastiveStep } from './clip-loss.js';
export { parseDelimited, readCaptionTable, syntheticCaption, syntheticCaptionItem } from './data-captions.js';
export type { CaptionEntry } from './data-captions.js';
export { rankShards, readWebDataset, tarSampleCount, WDS_SHUFFLE, WebDatasetStream, webDatasetShards } from './data-webdataset.js';
export type { StreamPair, WebDatasetSample, WebDatasetStreamOptions } from './data-webdataset.js';
export { BatchPreparer, initRng, STREAMS } from './batch.js';
export type { DinoBatch, PreparedBatch, SupervisedBatch } from './batch.js';
export { listCheckpoints, loadCheckpoint, pruneCheckpoints, resumePoint, RunMismatchError, saveCheckpoint } from './checkpoint.js';
export { isPaperPreset, PRESET_ALIASES, PRESET_NAMES, PRESETS } from './config-presets.js';
export { presetConfig, resolveTrainConfig, validateTrainConfig } from './config-validate.js';
export { assertDataSource, DEFAULT_CONFIG, mergeTrainConfig, modelConfig, scaledLr } from './config.js';
export type { PartialTrainConfig, TrainConfig } from './config.js';
export { openData, openDataAsync, SubsetDataset } from './data.js';
export type {
  AppliedStep,
  ComputedStep,
  EngineContext,
  EngineFactory,
  EngineState,
  ParameterInfo,
  StateLayout,
  StateTargets,
  StepEngine,
  StepSettings,
  StepUpdate,
} from './engine.js';
export { evaluate } from './evaluate.js';
export type { EvalResult } from './evaluate.js';
export { ClassifierHead, DinoHead } from './heads.js';
export { knnClassify, l2NormalizeRows, topK } from './knn.js';
export type { KnnOptions, KnnResult } from './knn.js';
export { train, Trainer } from './loop.js';
export type { TrainOptions, TrainResult } from './train-options.js';
export {
  bceWithLogits,
  binaryCrossEntropyLoss,
  binaryCrossEntropyTargets,
  Center,
  dinoCrossEntropy,
  dinoGlobalLocalLoss,
  entropies,
  ibotMaskedLoss,
  koleoLoss,
  softTargetCrossEntropy,
  teacherSoftmaxCenter,
} from './losses.js';
export { collateMasks, MaskingGenerator } from './masking.js';
export { checkTrainingFits } from './memory-check.js';
export { mixupCutmix, smoothOneHot } from './mixup.js';
export { onnxRuntimeEngine, OnnxRuntimeEngine } from './onnx/engine.js';
export type { OnnxRuntimeEngineOptions } from './onnx/engine.js';
export { checkThreadsOnDevice, checkTrainEngineOptions, resolveTrainEngine } from './onnx/engine-select.js';
export { OnnxClipEngine } from './onnx/clip-engine.js';
export type { OnnxClipOptions } from './onnx/clip-engine.js';
export { clipFeaturesGraph, clipLossStepGraph, clipTowersGraph } from './onnx/clip-graphs.js';
export type { ClipGraphOptions } from './onnx/clip-graphs.js';
export { registerOnnxFactory } from './onnx/clip-settings.js';
export type { ResolvedTrainEngine, TrainEngineOptions } from './onnx/engine-select.js';
export { dinoDropPath, maskRowBucket, padMaskRows, padRows, supervisedDropPath } from './onnx/feeds.js';
export {
  classifierGraph,
  dinoHeadGraph,
  dinoStudentStepGraph,
  encodeGraph,
  supervisedStepGraph,
  teacherGraph,
  TRAINING_SESSION_OPTIONS,
} from './onnx/graphs.js';
export type {
  BuiltGraph,
  DinoHeads,
  DinoStepGraphOptions,
  GraphBuildOptions,
  GraphIO,
  IbotHeadMode,
  SupervisedGraphOptions,
  TeacherGraphOptions,
} from './onnx/graphs.js';
export { AdamW, clipByGlobalNorm, clipPerModule, Lamb } from './optim.js';
export type { ClipOptions } from './optim.js';
export { isNoDecay, layerId, paramGroups, plainParams } from './param-groups.js';
export type { ParamSpec } from './param-groups.js';
export { cosineAnnealingSchedule, cosineSchedule, polySchedule } from './schedules.js';
export { checkState, loadTrainingState, restoreTrainingState, saveTrainingState, weightsChecksum } from './state.js';
export { readTrainingStateInto } from './state-read.js';
export type { ReadTrainingState } from './state-read.js';
export {
  parseStopSignals,
  SharedStop,
  signalExitCode,
  signalName,
  signalNumber,
  STOP_KEY,
  STOP_SIGNALS,
  stopCode,
  stopOnSignals,
} from './stop.js';
export type { StopOnSignalsOptions, StopSignal } from './stop.js';
export { clipStep } from './steps/clip.js';
export type { ClipBatch, ClipStepResult } from './steps/clip.js';
export { contiguousView, flattenBuffers, LocalGradientSync, MembershipChanged, unflattenInto } from './sync.js';
export type { GradientSync } from './sync.js';
export { tfjsEngine, TfjsEngine } from './tfjs-engine.js';
export { MAX_WORKERS, SharedMemorySync, trainThreads } from './threads.js';
