// The job viewer: NiiVue (vendored UMD bundle, globalThis.niivue) in three planes, with the
// fixed, moving or warped image as the base and one derived overlay on the fixed grid, plus
// label contours. Derived images are computed here from the artifacts (derive.js), so the
// worker's contract stays the files it already writes.

import { getBuffer } from "./api.js";
import * as derive from "./derive.js";
import { lpsToVoxel, readNifti, writeLike } from "./nifti.js";

const { Niivue, NVImage } = globalThis.niivue;

// name -> how to draw it: colormap, display range, and whether the user's opacity applies
const STYLE = {
  checker: { colormap: "gray", range: [0, 1] },
  "checker-before": { colormap: "gray", range: [0, 1] },
  "diff-after": { colormap: "hot", range: [0.05, 0.5] },
  "diff-before": { colormap: "hot", range: [0.05, 0.5] },
  displacement: { colormap: "viridis" },
  // |log J| from 0.05 (a 5 % change of volume) to 1 (x 2.7): smaller changes stay clear
  jacobian: { colormap: "warm", negative: "winter", range: [0.05, 1] },
  folding: { colormap: "red", range: [0.5, 1], opaque: true },
  "grid-axial": { colormap: "green", range: [0.5, 1] },
  "grid-coronal": { colormap: "green", range: [0.5, 1] },
  "grid-sagittal": { colormap: "green", range: [0.5, 1] },
  fixedContour: { colormap: "green", range: [0.5, 1], opaque: true },
  warpedContour: { colormap: "violet", range: [0.5, 1], opaque: true },
};

async function volume(buffer, name, style = {}, opacity = 1) {
  const image = await NVImage.new(buffer, `${name}.nii`, style.colormap || "gray", opacity);
  if (style.range) [image.cal_min, image.cal_max] = style.range;
  if (style.negative) {
    image.colormapNegative = style.negative;
    [image.cal_minNeg, image.cal_maxNeg] = [-style.range[1], -style.range[0]];
  }
  return image;
}

export class Viewer {
  constructor(canvas, state) {
    this.canvas = canvas;
    this.state = state; // a <p> for what the viewer is doing
    this.nv = null;
    this.layers = {};
  }

  async load(job) {
    this.state.textContent = "loading images…";
    const get = (url) => getBuffer(url);
    const [fixedRaw, movingRaw, warpedRaw, jacobianRaw, fieldRaw] = await Promise.all([
      get(job.inputs.fixed), get(job.inputs.moving), get(job.artifacts.warped),
      get(job.artifacts.jacobian), get(job.artifacts.displacement),
    ]);
    const [fixed, moving, warped, jacobian, field] = await Promise.all(
      [fixedRaw, movingRaw, warpedRaw, jacobianRaw, fieldRaw].map(readNifti),
    );
    const n = fixed.data.length;
    const f = derive.normalize(fixed.data);
    const w = derive.normalize(warped.data);
    // moving lives on its own grid; voxelwise "before" images only when the grids agree.
    const sameGrid = moving.data.length === n && moving.spatial.every((d, i) => d === fixed.spatial[i]);
    const m = sameGrid ? derive.normalize(moving.data) : null;
    const jac = derive.jacobianLayers(jacobian.data);
    const mag = derive.magnitude(field.data, n);
    const derived = {
      checker: derive.checkerboard(f, w, fixed.spatial),
      "diff-after": derive.absDifference(f, w),
      displacement: mag,
      jacobian: jac.log,
      folding: jac.folding,
    };
    if (m) {
      derived["checker-before"] = derive.checkerboard(f, m, fixed.spatial);
      derived["diff-before"] = derive.absDifference(f, m);
    }
    // One grid per plane (a grid is a 2-D thing): shown, its plane is shown alone.
    const toVoxel = lpsToVoxel(fixed);
    const planes = { axial: [0, 1], coronal: [0, 2], sagittal: [1, 2] };
    for (const [plane, axes] of Object.entries(planes))
      if (axes.every((a) => fixed.spatial[a] > 1))
        derived[`grid-${plane}`] = derive.deformationGrid(field.data, fixed.spatial, toVoxel, axes);
    const magMax = mag.reduce((a, b) => Math.max(a, b), 0);
    STYLE.displacement.range = [magMax * 0.02, Math.max(magMax, 1e-6)];
    if (job.inputs.fixed_labels && job.artifacts.labels) {
      const [fl, wl] = await Promise.all(
        [job.inputs.fixed_labels, job.artifacts.labels].map(async (u) => readNifti(await get(u))),
      );
      derived.fixedContour = derive.contours(fl.data, fixed.spatial);
      derived.warpedContour = derive.contours(wl.data, fixed.spatial);
    }
    this.layers = {
      fixed: await volume(fixedRaw, "fixed"),
      moving: await volume(movingRaw, "moving"),
      warped: await volume(warpedRaw, "warped"),
    };
    for (const [name, data] of Object.entries(derived))
      this.layers[name] = await volume(writeLike(fixed, data), name, STYLE[name]);
    this.folded = jac.folded;
    this.is2d = fixed.spatial[2] === 1;
    this.nv = new Niivue({
      backColor: [0, 0, 0, 1],
      crosshairColor: [0.3, 0.8, 1, 0.5], // not red: red marks folding
      // 0.6 % of the field of view: the default (one voxel wide) hides small images
      crosshairWidthUnit: "percent",
      crosshairWidth: 0.6,
      isNearestInterpolation: true, // voxels as they are: labels and folding stay crisp
      multiplanarShowRender: 0, // three planes, no 3-D render tile
      dragAndDropEnabled: false,
      isColorbar: false,
      logLevel: "warn",
    });
    await this.nv.attachToCanvas(this.canvas);
    this.nv.setSliceType(this.is2d ? this.nv.sliceTypeAxial : this.nv.sliceTypeMultiplanar);
    this.state.textContent =
      `${fixed.spatial.join(" × ")} voxels; |J| from ${jac.min.toFixed(3)} to ` +
      `${jac.max.toFixed(3)}, ${jac.folded} folded voxel(s) (|J| ≤ 0)` +
      (m ? "" : "; moving is on another grid, so the 'before' overlays are off");
    const grids = Object.keys(derived).filter((name) => name.startsWith("grid-"));
    return { hasBefore: Boolean(m), hasLabels: Boolean(derived.fixedContour), grids };
  }

  // Rebuild the stack: base image, the chosen overlay, contours on top.
  show({ base, overlay, opacity, contours }) {
    const names = [base];
    if (overlay !== "none" && this.layers[overlay]) names.push(overlay);
    if (overlay === "jacobian") names.push("folding");
    if (contours && this.layers.fixedContour) names.push("fixedContour", "warpedContour");
    for (const v of [...this.nv.volumes]) this.nv.removeVolume(v);
    for (const [i, name] of names.entries()) {
      const layer = this.layers[name];
      layer.opacity = i === 0 || STYLE[name]?.opaque ? 1 : opacity;
      this.nv.addVolume(layer);
    }
    const plane = overlay.startsWith("grid-") ? overlay.slice(5) : null;
    const types = { axial: this.nv.sliceTypeAxial, coronal: this.nv.sliceTypeCoronal,
                    sagittal: this.nv.sliceTypeSagittal };
    this.nv.setSliceType(plane ? types[plane] : this.is2d ? types.axial : this.nv.sliceTypeMultiplanar);
    this.nv.updateGLVolume();
  }

  // axis 0 sagittal (x), 1 coronal (y), 2 axial (z); position in [0, 1] of the volume
  setSlice(axis, fraction) {
    const pos = [...this.nv.scene.crosshairPos];
    pos[axis] = fraction;
    this.nv.scene.crosshairPos = pos;
    this.nv.drawScene();
  }
}
