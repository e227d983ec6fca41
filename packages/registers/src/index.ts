/** @vitreg/registers: the public API (see README.md). */
export { analysisToJson, analyzeTokens, tokenDataFromOutput } from './analysis.js';
export type { TokenAnalysis, TokenData } from './analysis.js';
export { attentionToPatches, mapStats, meanMap } from './attention-maps.js';
export { ClipModel, CLIP_MODEL_NAMES, getClipConfig, l2Normalize, LOGIT_SCALE_MAX, validateClipConfig } from './clip-model.js';
export type { ClipConfig } from './clip-model.js';
export { encodeClip, inferTextConfig, loadClip, saveClip } from './clip-weights.js';
export type { ClipLoadOptions, ClipSaveOptions } from './clip-weights.js';
export { CONFIG_FIELDS, ffnHiddenDim, getConfig, MODEL_NAMES, posGrid } from './config.js';
export type { ViTConfig } from './config.js';
export { disposeOutput, ENGINE_CHOICES, outputTensors, TfjsEncoder } from './encoder.js';
export type { Encoder, EncoderOutput, EngineChoice, EngineName, ImageBatch } from './encoder.js';
export { featureTensors, writeFeatureFile } from './feature-file.js';
export { inferConfig } from './infer-config.js';
export { posEmbedMatrices } from './interpolate.js';
export { firstOutlierLayer, layerOutlierShares, layerSummaries } from './layer-summary.js';
export type { LayerOutlierShare, LayerSummary } from './layer-summary.js';
export { blockDropRate, dropPathFactors, forwardDropPathFactors, initialParameters, parameterShapes, VisionTransformer } from './model.js';
export type { ViTOutput } from './model.js';
export { detectNaming, NAMINGS } from './namings.js';
export { activeBudget, checkVitFits, parameterCount, vitMemoryNeed } from './memory-need.js';
export type { CropGroup, VitMemoryOptions } from './memory-need.js';
export { l2Norms, tokenNorms } from './norms.js';
export { firstErrorLine, loadOnnxRuntime, ONNX_DEVICES, OnnxEncoder, onnxRuntimeAvailable, onnxSessionError } from './onnx-encoder.js';
export type { OnnxDevice, OnnxEncoderOptions } from './onnx-encoder.js';
export { exportOnnx, ONNX_OUTPUTS, onnxModelBytes } from './onnx-export.js';
export type { OnnxOutput } from './onnx-export.js';
export { GraphBuilder } from './onnx-graph.js';
export type { AttrValue } from './onnx-graph.js';
export { gelu, geluLinear, layerNorm, linear, matMul2d, multiHeadAttention, reshape, residual, setAttentionStrategy, silu } from './ops.js';
export {
  DEFAULT_OUTLIER_RULE,
  describeOutlierRule,
  detectOutliers,
  fitTwoGaussians,
  otsuThreshold,
  outlierRule,
  testBimodality,
} from './outliers.js';
export { neighbourSimilarity, redundancy } from './redundancy.js';
export { fitPosEmbed } from './state-dict.js';
export type { StateDict } from './state-dict.js';
export {
  findRegisterNeurons,
  loadTestTimeRegisters,
  modelFingerprint,
  saveTestTimeRegisters,
  testTimeRegisterNeurons,
  testTimeRegistersFile,
  TTR_PRESETS,
  withTestTimeRegisters,
} from './test-time-registers.js';
export type { RegisterNeuron } from './test-time-registers.js';
export { DEFAULT_TEXT_CONFIG, eotPositions, TextTransformer, textParameterShapes, validateTextConfig } from './text-tower.js';
export type { TextConfig, TextOutput } from './text-tower.js';
export { cleanText, ClipTokenizer, fixText, wordMerges } from './tokenizer.js';
export type { ClipTokenizerOptions } from './tokenizer.js';
export { hasOwnModelLayout, toModelLayout, torchShapes } from './torch-layout.js';
export { readRegisterNeurons, testTimeRegisterEncoder, TtrEncoder } from './ttr-encoder.js';
export type { TestTimeRegisterSpec } from './ttr-encoder.js';
export {
  encodeStateDict,
  loadWeights,
  modelFromStateDict,
  readCheckpoint,
  readWeights,
  saveWeights,
  stateDictFromWeights,
  stateDictOf,
  stripPrefix,
  weightsFromStateDict,
} from './weights.js';
export type { HostBackbone } from './weights.js';
