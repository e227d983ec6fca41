/** @vitreg/viz: the public API (see README.md). */
export { analyzeImages, describeEncoder, imageFileInputs, tensorInputs } from './analysis-run.js';
export type { AnalysisInput } from './analysis-run.js';
export { Canvas, textWidth } from './canvas.js';
export { applyColormap, colormap } from './colormap.js';
export {
  attentionFigure,
  imageFromNormalized,
  layerFigure,
  mapGrid,
  normFigure,
  normHistogram,
  pcaFigure,
  registerFigure,
} from './figures.js';
export { blend, colorBar, heatmap, hstack, titled, upsampleMap, vstack } from './heatmap.js';
export { fitPca, pcaColors, projectPca } from './pca.js';
export type { Pca } from './pca.js';
export { histogramPlot, linePlot, logTicks, niceTicks } from './plot.js';
export { canvasToPng, savePng } from './png.js';
export { renderReport, reportNumbers } from './report.js';
