// Images the viewer derives voxel by voxel on the fixed grid. Arrays are NIfTI order:
// x fastest, then y, then z (and for a vector field, the component slowest).

// Intensities to [0, 1] between the 1st and 99th percentiles, so one bright voxel does
// not darken the whole difference image.
export function normalize(data) {
  const step = Math.max(1, Math.floor(data.length / 20000));
  const sample = [];
  for (let i = 0; i < data.length; i += step) sample.push(data[i]);
  sample.sort((a, b) => a - b);
  const lo = sample[Math.floor(0.01 * (sample.length - 1))];
  const hi = sample[Math.ceil(0.99 * (sample.length - 1))];
  const scale = hi > lo ? 1 / (hi - lo) : 0;
  return data.map((v) => Math.min(1, Math.max(0, (v - lo) * scale)));
}

export function absDifference(a, b) {
  return a.map((v, i) => Math.abs(v - b[i]));
}

// Squares of ~1/8 of the smallest in-plane side alternate between ``a`` and ``b``.
export function checkerboard(a, b, [nx, ny, nz]) {
  const sides = [nx, ny, nz].filter((n) => n > 1);
  const tile = Math.max(2, Math.round(Math.min(...sides) / 8));
  const out = new Float32Array(a.length);
  for (let z = 0, i = 0; z < nz; z++)
    for (let y = 0; y < ny; y++)
      for (let x = 0; x < nx; x++, i++) {
        const parity = (Math.floor(x / tile) + Math.floor(y / tile) + Math.floor(z / tile)) % 2;
        out[i] = parity ? b[i] : a[i];
      }
  return out;
}

// |u| in mm of a displacement field stored (x, y, z, 1, D): component c of voxel v at c*n + v.
export function magnitude(field, n) {
  const components = field.length / n;
  const out = new Float32Array(n);
  for (let c = 0; c < components; c++)
    for (let v = 0; v < n; v++) out[v] += field[c * n + v] ** 2;
  return out.map(Math.sqrt);
}

// log|J| where J > 0 (0 elsewhere), and the folding mask (1 where J <= 0).
export function jacobianLayers(det) {
  const log = det.map((j) => (j > 0 ? Math.log(j) : 0));
  const folding = det.map((j) => (j <= 0 ? 1 : 0));
  const folded = folding.reduce((a, b) => a + b, 0);
  // reduce, not Math.min(...det): spreading millions of voxels overflows the call stack
  const min = det.reduce((a, b) => Math.min(a, b), Infinity);
  const max = det.reduce((a, b) => Math.max(a, b), -Infinity);
  return { log, folding, folded, min, max };
}

// 1 on the voxels of a label that touch another label (6-neighbourhood): drawn thin, they
// read as contours in each plane.
export function contours(labels, [nx, ny, nz]) {
  const out = new Float32Array(labels.length);
  const at = (x, y, z) => labels[x + nx * (y + ny * z)];
  for (let z = 0, i = 0; z < nz; z++)
    for (let y = 0; y < ny; y++)
      for (let x = 0; x < nx; x++, i++) {
        const v = labels[i];
        if (v === 0) continue;
        const edge =
          (x > 0 && at(x - 1, y, z) !== v) || (x < nx - 1 && at(x + 1, y, z) !== v) ||
          (y > 0 && at(x, y - 1, z) !== v) || (y < ny - 1 && at(x, y + 1, z) !== v) ||
          (z > 0 && at(x, y, z - 1) !== v) || (z < nz - 1 && at(x, y, z + 1) !== v) ||
          x === 0 || y === 0 || x === nx - 1 || y === ny - 1;
        if (edge) out[i] = 1;
      }
  return out;
}

// The deformation grid in one plane: lines every ``every`` voxels along the plane's two axes,
// drawn at the fixed voxels whose moving point x + u(x) lies on them, so the squares show how
// the moving image was pulled onto the fixed grid. ``toVoxel`` takes u (LPS mm) to voxel
// steps (nifti.lpsToVoxel); ``axes`` are the plane's axes (0 x, 1 y, 2 z).
export function deformationGrid(field, [nx, ny, nz], toVoxel, axes, every = 4) {
  const n = nx * ny * nz;
  const components = field.length / n;
  const out = new Float32Array(n);
  const u = [0, 0, 0];
  for (let z = 0, v = 0; z < nz; z++)
    for (let y = 0; y < ny; y++)
      for (let x = 0; x < nx; x++, v++) {
        for (let c = 0; c < components; c++) u[c] = field[c * n + v];
        const p = [x, y, z];
        for (const a of axes) {
          const q = p[a] + toVoxel[a][0] * u[0] + toVoxel[a][1] * u[1] + toVoxel[a][2] * u[2];
          const r = ((q % every) + every) % every;
          if (r < 0.5 || r >= every - 0.5) out[v] = 1;
        }
      }
  return out;
}
