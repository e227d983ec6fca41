/** @vitreg/core: the public API (see README.md). */
export { BACKEND_NAMES, getBackendName, initBackend } from './backend.js';
export type { BackendInfo, BackendName } from './backend.js';
export { ADE20K_CLASSES, Ade20kDataset } from './data/ade20k.js';
export { CocoDataset } from './data/coco.js';
export { DENSE_TASKS, encodeLabelPng, encodeUint16Png, IGNORE_LABEL, readLabelPng, readUint16Png } from './data/dense.js';
export type { DenseDataset, DenseItem, DenseTarget, DenseTask } from './data/dense.js';
export { FileListDataset, parseFileList, readClassNames } from './data/file-list.js';
export { IMAGE_FOLDER_INDEX_NAME } from './data/image-folder-index.js';
export type { ImageFolderOptions } from './data/image-folder-listing.js';
export { ImageFolderDataset } from './data/image-folder.js';
export { NYU_EIGEN_CROP, NyuDepthDataset } from './data/nyu.js';
export { batches, BatchPrefetcher, Prefetcher, uvThreadpoolSize } from './data/prefetch.js';
export { DistributedSampler, RASampler } from './data/sampler.js';
export type { CursorSampler, SampleRef } from './data/sampler.js';
export { SYNTHETIC_DEPTH, SyntheticDenseDataset } from './data/synthetic-dense.js';
export { SYNTHETIC_SHAPES, SyntheticDataset } from './data/synthetic.js';
export type { SyntheticBackground, SyntheticBackgroundMode, SyntheticOptions, SyntheticScene } from './data/synthetic.js';
export type { Box, Dataset, DatasetItem } from './data/types.js';
export { ALL_ANNOTATIONS, VOC_CLASSES, VocDataset } from './data/voc.js';
export { asInputError, InputError } from './errors.js';
export { choiceFlag, FlagError, Flags, intFlag, numberFlag, pathProblem } from './flags.js';
export type { FlagOptions, FlagSpec, FlagValues, ParsedArgs, WithHelp } from './flags.js';
export { DIR_FSYNC_UNSUPPORTED, ensureDir, syncDir, writeFileAtomic, writeJsonAtomic } from './fs.js';
export { ensureGradients } from './gradients.js';
export { imageFileBatches } from './image-batches.js';
export type { ImageFileBatch } from './image-batches.js';
export { IMAGE_EXTENSIONS, listImageFiles } from './image-files.js';
export {
  applyPlan,
  cropRgb,
  decodeImage,
  encodePng,
  IMAGENET_MEAN,
  IMAGENET_STD,
  loadImage,
  normalizeRgb,
  planTransform,
  resizeBicubic,
  roundHalfEven,
  stackImages,
} from './image.js';
export type { ImageTransform, RgbImage } from './image.js';
export { firstDifference } from './json-diff.js';
export { isQuiet, log, setQuiet } from './log.js';
export { checkpointNames, stem, uniqueNames } from './names.js';
export { backendBudget, checkMemoryFit, formatBytes, hostMemory, MEMORY_WAYS_OUT, totalNeed, WASM_HEAP_BYTES } from './memory-fit.js';
export type { MemoryBudget, MemoryNeed } from './memory-fit.js';
export { Progress } from './progress.js';
export { readPth } from './pth.js';
export {
  appendDurably,
  describeSettingsChanges,
  JsonLinesLog,
  readFinishedResult,
  RowFiles,
  settingsChanges,
  SettingsMismatchError,
  stampSettings,
} from './resumable.js';
export { Rng } from './rng.js';
export { signalName, signalNumber } from './signals.js';
export { FeatureWriter } from './safetensors-stream.js';
export { fileKind, readSafetensors, SafetensorsReader, writeSafetensors } from './safetensors.js';
export { float32TargetProblems, readFloat32Into, readSafetensorsInto } from './safetensors-read-into.js';
export type { Float32Target } from './safetensors-read-into.js';
export { DTYPE_SIZE, fromFloat32, hostTensor, numel, toFloat32 } from './tensor.js';
export type { HostTensor } from './tensor.js';
export { startThread } from './thread.js';
export { CHILDREN_FROM_DIST, childNodeArgs, distEntry, MALLOC_TUNABLES, mallocTunablesMissing, withMallocTunables } from './node-entry.js';
export { adapterFlags, describeAdapter } from './webgpu-dawn.js';
export { setupWebGpu } from './webgpu.js';
