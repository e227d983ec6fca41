/** @vitreg/viz: the public API (see README.md). */
export { analyzeImages, describeEncoder, imageFileInputs, tensorInputs } from './analysis-run.js';
export type { AnalysisInput } from './analysis-run.js';
export { Canvas, LABEL_SCALE, textWidth } from './canvas.js';
export type { FigureInfo } from './canvas.js';
export { applyColormap, colormap } from './colormap.js';
export {
  attentionFigure,
  imageFromNormalized,
  layerFigure,
  mapGrid,
  MIN_PANEL,
  normFigure,
  normHistogram,
  pcaFigure,
  registerFigure,
} from './figures.js';
export { blend, colorBar, formatDistinct, heatmap, hstack, titled, upsampleMap, vstack } from './heatmap.js';
export { fitPca, pcaColors, projectPca } from './pca.js';
export type { Pca } from './pca.js';
export { axisRange, histogramPlot, linePlot, logTicks, niceTicks } from './plot.js';
export { canvasToPng, savePng } from './png.js';
export { renderReport, reportNumbers } from './report.js';
