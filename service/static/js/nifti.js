// Just enough NIfTI-1 for the viewer's derived images (checkerboard, differences, field
// magnitude, contours): read voxels as float32, write a new image on the fixed image's grid
// by copying its header. NiiVue reads the originals itself; it does not read 5-D vector
// fields, hence our own reader for displacement.nii.gz. Little-endian files only (what
// SimpleITK and nibabel write on every platform we serve).

const TYPES = {
  2: Uint8Array, 4: Int16Array, 8: Int32Array, 16: Float32Array, 64: Float64Array,
  256: Int8Array, 512: Uint16Array, 768: Uint32Array,
};

async function gunzip(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== 0x1f || bytes[1] !== 0x8b) return buffer;
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(stream).arrayBuffer();
}

export async function readNifti(buffer) {
  const raw = await gunzip(buffer);
  const view = new DataView(raw);
  if (view.getInt32(0, true) !== 348) throw new Error("not a little-endian NIfTI-1 file");
  const dims = Array.from({ length: 8 }, (_, i) => view.getInt16(40 + 2 * i, true));
  const datatype = view.getInt16(70, true);
  const offset = Math.round(view.getFloat32(108, true));
  const slope = view.getFloat32(112, true) || 1;
  const inter = view.getFloat32(116, true) || 0;
  const Type = TYPES[datatype];
  if (!Type) throw new Error(`NIfTI datatype ${datatype} is not supported by the viewer`);
  const count = dims.slice(1, dims[0] + 1).reduce((a, b) => a * Math.max(b, 1), 1);
  // slice(): typed arrays need an aligned start; vox_offset need not be one.
  const values = new Type(raw.slice(offset, offset + count * Type.BYTES_PER_ELEMENT));
  const data = Float32Array.from(values, (v) => v * slope + inter);
  const spatial = [1, 2, 3].map((i) => (i <= dims[0] ? Math.max(dims[i], 1) : 1));
  return { header: raw.slice(0, 348), dims, spatial, data };
}

// A float32 image with ``data`` on the grid of ``like`` (a readNifti result); returned as an
// uncompressed .nii ArrayBuffer for NiiVue.
export function writeLike(like, data) {
  const out = new ArrayBuffer(352 + data.length * 4);
  new Uint8Array(out).set(new Uint8Array(like.header));
  const view = new DataView(out);
  const dims = [3, ...like.spatial, 1, 1, 1, 1];
  dims.forEach((d, i) => view.setInt16(40 + 2 * i, d, true));
  view.setInt16(70, 16, true); // float32
  view.setInt16(72, 32, true); // bitpix
  view.setFloat32(108, 352, true); // vox_offset: header + 4-byte extension flag
  view.setFloat32(112, 1, true); // scl_slope
  view.setFloat32(116, 0, true); // scl_inter
  view.setFloat32(124, 0, true); // cal_max: let NiiVue compute its own range
  view.setFloat32(128, 0, true); // cal_min
  view.setInt16(68, 0, true); // intent_code: a plain image, whatever the template was
  new Uint8Array(out, 344, 4).set([0x6e, 0x2b, 0x31, 0]); // magic "n+1\0"
  new Float32Array(out, 352).set(data);
  return out;
}

// The 3 x 3 matrix taking a displacement in LPS mm (the artifact contract's) to voxel steps of
// this image's grid: inv(M) * diag(-1, -1, 1), M the sform's voxel -> RAS mm part. Without an
// sform, the grid is taken as axis-aligned with the voxel sizes (pixdim).
export function lpsToVoxel(image) {
  const view = new DataView(image.header);
  let m;
  if (view.getInt16(254, true) > 0) {
    m = [0, 1, 2].map((r) => [0, 1, 2].map((c) => view.getFloat32(280 + 16 * r + 4 * c, true)));
  } else {
    const size = [1, 2, 3].map((i) => view.getFloat32(76 + 4 * i, true) || 1);
    m = [0, 1, 2].map((r) => [0, 1, 2].map((c) => (r === c ? (r < 2 ? -1 : 1) * size[r] : 0)));
  }
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
  const inv = [
    [(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
    [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
    [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det],
  ];
  return inv.map((row) => [-row[0], -row[1], row[2]]);
}
