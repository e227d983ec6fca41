export * from './types.js';
export * from './synthetic.js';
export * from './image-folder.js';
export * from './file-list.js';
export * from './prefetch.js';
export * from './sampler.js';
export * from './voc.js';
export * from './coco.js';
export { parseXml, type XmlElement } from './xml.js';
