/**
 * A self-contained HTML report of a token analysis: inline CSS, no scripts, images as relative links
 * to the PNG files next to it. One section per image (the input, then per model its norm map,
 * attention maps, PCA map, plots and numbers, models side by side), a summary table first, and the
 * inputs that could not be read at the end.
 */
import { describeOutlierRule, type TokenAnalysis } from '@vitreg/registers';

export interface ReportModel {
  /** Short name shown in headings, e.g. "A" or "without registers". */
  label: string;
  /** Where the weights came from. */
  weights: string;
  /** One line about the model (config name, registers, depth). */
  description?: string;
}

/** One model's result on one image. */
export interface ReportEntry {
  /** Figure title -> PNG path relative to the report. */
  figures: Record<string, string>;
  /** Name -> value, shown as a table and (the same keys) in the summary. */
  numbers: Record<string, string | number | null>;
}

export interface ReportImage {
  name: string;
  /** Where the input came from (file path or tensor name). */
  source: string;
  /** The input as the model saw it: PNG path relative to the report. */
  input: string;
  /** One entry per model, in the order of `ReportInput.models`. */
  results: ReportEntry[];
}

export interface ReportInput {
  title: string;
  models: ReportModel[];
  images: ReportImage[];
  /** Inputs that were skipped, with the reason. */
  failed?: { path: string; error: string }[];
  /** Extra lines under the title (settings). */
  notes?: string[];
}

/** Escape text for HTML element content and attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** Relative path as a URL (each segment percent-encoded). */
function href(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}

function fmt(v: string | number | null): string {
  if (v === null) return '–';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  return v;
}

/** The numbers the report shows for one analysis. */
export function reportNumbers(a: TokenAnalysis): Record<string, string | number | null> {
  const norms = a.source === 'prenorm' ? a.norms.patches.prenorm : a.norms.patches.postnorm;
  const sorted = Float64Array.from(norms).sort();
  const o = a.outliers;
  const bm = o.bimodality;
  return {
    outliers: o.indices.length,
    'outlier %': 100 * o.fraction,
    threshold: o.threshold,
    // The automatic rule's measured separation and verdict ("no outliers" and why), and the rule itself.
    'mode ratio (high/low)': bm ? bm.ratio : null,
    "Ashman's D": bm ? bm.separation : null,
    verdict: bm ? `${bm.bimodal ? 'outliers' : 'no outliers'}: ${bm.reason}` : null,
    'outlier rule': describeOutlierRule(o),
    'median norm': sorted[sorted.length >> 1],
    'max norm': sorted[sorted.length - 1],
    'first outlier layer': a.firstOutlierLayer,
    'CLS attention on outliers %': a.cls ? 100 * a.cls.stats.outlierMass : null,
    'neighbour cos, outliers': a.redundancy?.outlierMean ?? null,
    'neighbour cos, normal': a.redundancy?.normalMean ?? null,
    registers: a.numRegisters,
  };
}

const SUMMARY_KEYS = [
  'outliers',
  'outlier %',
  'threshold',
  'mode ratio (high/low)',
  'max norm',
  'first outlier layer',
  'CLS attention on outliers %',
];

const CSS = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-top: 1px solid #ccc; padding-top: 12px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; font-weight: 600; font-size: 13px; } td:first-child, th:first-child { text-align: left; }
td:first-child { white-space: nowrap; } .wide { overflow-x: auto; max-width: 100%; }
.models { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; } .model { flex: 1 1 0; min-width: 480px; }
figure { margin: 8px 0; } figcaption { font-size: 12px; color: #555; } img { max-width: 100%; }
figure.input img { min-width: 192px; image-rendering: pixelated; }
.failed { color: #a00; }
`;

/** Render the report as one HTML document. */
export function renderReport(r: ReportInput): string {
  const e = escapeHtml;
  const out: string[] = [];
  out.push(
    '<!DOCTYPE html>',
    '<html lang="en"><head><meta charset="utf-8">',
    `<title>${e(r.title)}</title>`,
    `<style>${CSS}</style>`,
    '</head><body>',
  );
  out.push(`<h1>${e(r.title)}</h1>`);
  for (const m of r.models) out.push(`<p><b>Model ${e(m.label)}</b>: ${e(m.weights)}${m.description ? ` – ${e(m.description)}` : ''}</p>`);
  for (const n of r.notes ?? []) out.push(`<p>${e(n)}</p>`);

  // The table scrolls sideways on a narrow window; image names stay on one line.
  out.push('<h2>Summary</h2>', '<div class="wide"><table><tr><th rowspan="2">image</th>');
  for (const m of r.models) out.push(`<th colspan="${SUMMARY_KEYS.length}">model ${e(m.label)}</th>`);
  out.push('</tr><tr>');
  for (let i = 0; i < r.models.length; i++) for (const k of SUMMARY_KEYS) out.push(`<th>${e(k)}</th>`);
  out.push('</tr>');
  for (const img of r.images) {
    out.push(`<tr><td><a href="#${e(encodeURIComponent(img.name))}">${e(img.name)}</a></td>`);
    for (const res of img.results) for (const k of SUMMARY_KEYS) out.push(`<td>${e(fmt(res.numbers[k] ?? null))}</td>`);
    out.push('</tr>');
  }
  out.push('</table></div>');
  if (r.failed && r.failed.length > 0) {
    out.push(`<p class="failed">${r.failed.length} input(s) could not be analysed, see the end of this page.</p>`);
  }

  for (const img of r.images) {
    out.push(`<h2 id="${e(encodeURIComponent(img.name))}">${e(img.name)}</h2>`, `<p>${e(img.source)}</p>`);
    out.push(
      `<figure class="input"><img src="${e(href(img.input))}" alt="input ${e(img.name)}"><figcaption>input as the model saw it</figcaption></figure>`,
    );
    out.push('<div class="models">');
    img.results.forEach((res, k) => {
      out.push(`<div class="model"><h3>model ${e(r.models[k]?.label ?? String(k))}</h3><table>`);
      for (const [key, v] of Object.entries(res.numbers)) out.push(`<tr><td>${e(key)}</td><td>${e(fmt(v))}</td></tr>`);
      out.push('</table>');
      for (const [title, path] of Object.entries(res.figures)) {
        out.push(`<figure><img src="${e(href(path))}" alt="${e(title)}"><figcaption>${e(title)}</figcaption></figure>`);
      }
      out.push('</div>');
    });
    out.push('</div>');
  }
  if (r.failed && r.failed.length > 0) {
    out.push('<h2>Skipped inputs</h2><ul class="failed">');
    for (const f of r.failed) out.push(`<li>${e(f.path)}: ${e(f.error)}</li>`);
    out.push('</ul>');
  }
  out.push('</body></html>', '');
  return out.join('\n');
}
