/**
 * Perceptually uniform colormaps as 256-entry RGB lookup tables. The anchors are matplotlib's
 * viridis and inferno tables (CC0) sampled at entries 0, 16, ..., 240 and 255; the 256-entry tables are
 * rebuilt by linear interpolation between them, within about one 8-bit step of the originals.
 */

export type ColormapName = 'viridis' | 'inferno';

const ANCHOR_INDEX = [0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 255];

const ANCHORS: Record<ColormapName, number[][]> = {
  viridis: [
    [0.267004, 0.004874, 0.329415],
    [0.282327, 0.094955, 0.417331],
    [0.278826, 0.17549, 0.483397],
    [0.258965, 0.251537, 0.524736],
    [0.229739, 0.322361, 0.545706],
    [0.19943, 0.387607, 0.554642],
    [0.172719, 0.448791, 0.557885],
    [0.149039, 0.508051, 0.55725],
    [0.127568, 0.566949, 0.550556],
    [0.120638, 0.625828, 0.533488],
    [0.157851, 0.683765, 0.501686],
    [0.24607, 0.73891, 0.452024],
    [0.369214, 0.788888, 0.382914],
    [0.515992, 0.831158, 0.294279],
    [0.678489, 0.863742, 0.189503],
    [0.845561, 0.887322, 0.099702],
    [0.993248, 0.906157, 0.143936],
  ],
  inferno: [
    [0.001462, 0.000466, 0.013866],
    [0.042253, 0.028139, 0.141141],
    [0.129285, 0.047293, 0.290788],
    [0.238273, 0.036621, 0.396353],
    [0.3415, 0.062325, 0.429425],
    [0.441207, 0.099338, 0.431594],
    [0.54092, 0.134729, 0.415123],
    [0.640135, 0.171438, 0.381065],
    [0.735683, 0.215906, 0.330245],
    [0.822386, 0.275197, 0.266085],
    [0.894305, 0.353399, 0.193584],
    [0.946965, 0.449191, 0.115272],
    [0.978422, 0.557937, 0.034931],
    [0.987874, 0.675267, 0.065257],
    [0.974638, 0.797692, 0.206332],
    [0.947594, 0.917399, 0.410665],
    [0.988362, 0.998364, 0.644924],
  ],
};

const TABLES = new Map<ColormapName, Uint8Array>();

/** The 256 x RGB lookup table of a colormap. */
export function colormap(name: ColormapName): Uint8Array {
  let lut = TABLES.get(name);
  if (lut) return lut;
  const anchors = ANCHORS[name];
  if (!anchors) throw new Error(`colormap: unknown colormap "${name}" (expected viridis or inferno)`);
  lut = new Uint8Array(256 * 3);
  for (let i = 0, a = 0; i < 256; i++) {
    while (ANCHOR_INDEX[a + 1] < i) a++;
    const i0 = ANCHOR_INDEX[a];
    const t = (i - i0) / (ANCHOR_INDEX[a + 1] - i0);
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(255 * (anchors[a][c] + t * (anchors[a + 1][c] - anchors[a][c])));
  }
  TABLES.set(name, lut);
  return lut;
}

/**
 * Map values to RGB bytes: `min` maps to the first colour, `max` to the last, values outside are
 * clamped. When min == max everything gets the middle colour.
 */
export function applyColormap(values: ArrayLike<number>, name: ColormapName, min: number, max: number): Uint8Array {
  const lut = colormap(name);
  const out = new Uint8Array(values.length * 3);
  const span = max - min;
  for (let i = 0; i < values.length; i++) {
    const t = span > 0 ? (values[i] - min) / span : 0.5;
    const k = Math.max(0, Math.min(255, Math.round(t * 255))) * 3;
    out[i * 3] = lut[k];
    out[i * 3 + 1] = lut[k + 1];
    out[i * 3 + 2] = lut[k + 2];
  }
  return out;
}
