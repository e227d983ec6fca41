export * from './canvas.js';
export * from './colormap.js';
export * from './heatmap.js';
export * from './plot.js';
export * from './pca.js';
export * from './figures.js';
export * from './png.js';
export * from './report.js';
