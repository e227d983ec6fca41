export * from './config.js';
export * from './interpolate.js';
export * from './ops.js';
export * from './model.js';
export * from './weights.js';
export * from './analysis.js';
