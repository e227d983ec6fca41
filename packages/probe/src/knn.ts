/** DINO's weighted k-NN classifier lives in @vitreg/trainer (its evaluation uses it); probes use it from here. */
export { knnClassify, l2NormalizeRows, topK, type KnnOptions, type KnnResult } from '@vitreg/trainer';
