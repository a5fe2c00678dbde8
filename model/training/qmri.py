"""Quantitative-MRI series with known respiratory motion, to score series registration.

Registration of a real qMRI series has no ground truth; a simulated one does. A cardiac-like
2-D phantom (body fat and muscle, lungs, liver, left/right ventricular blood, myocardium) is
given relaxation times from the literature, imaged at a series of inversion or saturation
times through a signal model, and each frame is moved by a smooth, mostly superior-inferior
respiratory displacement whose inverse is returned as the truth the registration should find.

Signal models (times in ms):

- MOLLI (Messroghli et al., MRM 2004), the three-parameter Look-Locker model
  ``S(TI) = |A - B exp(-TI / T1*)|`` with ``T1 = T1* (B / A - 1)``. We set ``A = PD r``,
  ``B = PD (1 + r)``, ``T1* = r T1`` with the Look-Locker ratio ``r = T1*/T1`` (default 0.85),
  which satisfies ``T1* = T1 / (B/A - 1)`` exactly. Hence ``S(0) = PD``, ``S(inf) = PD r`` and
  the signal nulls at ``TI0 = T1* ln(B/A) = r T1 ln(1 + 1/r)`` (``T1 ln 2`` when ``r = 1``).
- mSASHA, the three-parameter model (T1, T2, A) of Chow et al., "Improved accuracy and
  precision with three-parameter simultaneous myocardial T1 and T2 mapping using
  multiparametric SASHA", MRM 2022, as in its reference implementation:
  ``S(TS, TE) = A (1 - exp(-t_d/T1) (1 - exp(-TE/T2) + exp(-TS/T1) exp(-TE/T2)))`` where TS is
  the saturation-recovery time (up to the T2 preparation), TE the T2-preparation duration
  (0 without one) and t_d the time from the end of the preparation to the centre of k-space.
  Saturation recovery alone (TE = 0): ``A (1 - exp(-(TS + t_d)/T1))``; the unprepared image is
  TS = inf, TE = 0: ``A``. The RIIR paper (Zhang et al., arXiv 2406.13413) fits mSASHA with its
  Eq. 18; its text could not be retrieved here, so this is the published three-parameter
  model of Kellman's group (co-authors of both), not a verbatim copy of Eq. 18.

Conventions: images are (H, W) numpy arrays, axis 0 pointing inferior (the breathing axis),
axis 1 left-right; ``fields[n]`` is a voxel displacement (2, H, W) on the template grid, channel
c along axis c, with frame n at x + phi_n(x) showing the anatomy the template shows at x: the
registration engine's convention (``model.networks.warp``), what ``riir register-series`` should
return.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conventions import imageio

# -- tissues ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    t1_ms: float
    t2_ms: float
    pd: float  # relative proton density: the signal of a fully relaxed, unprepared image


# fmt: off
LABELS = {"air": 0, "fat": 1, "muscle": 2, "lung": 3, "liver": 4, "lv_blood": 5, "rv_blood": 6,
          "myocardium": 7}

# Rounded literature values, (T1 ms, T2 ms, relative proton density). Blood, myocardium,
# liver, skeletal muscle: Stanisz et al., "T1, T2 relaxation and magnetization transfer in
# tissue at 3T", MRM 2005 (which also lists 1.5 T). Subcutaneous fat: de Bazelaire et al.,
# Radiology 2004. Lung: approximate (its weak signal, a tenth of the proton density, is what
# matters). Proton densities are rough. Good enough for a motion phantom, not a reference.
TISSUES: dict[float, dict[int, Tissue]] = {
    1.5: {0: Tissue(1000, 50, 0.0),  # air: no signal, only noise
          1: Tissue(343, 58, 0.9), 2: Tissue(1008, 44, 0.75), 3: Tissue(1200, 40, 0.1),
          4: Tissue(576, 46, 0.75), 5: Tissue(1441, 290, 1.0), 6: Tissue(1441, 290, 1.0),
          7: Tissue(1030, 40, 0.8)},
    3.0: {0: Tissue(1000, 50, 0.0),
          1: Tissue(382, 68, 0.9), 2: Tissue(1412, 50, 0.75), 3: Tissue(1300, 35, 0.1),
          4: Tissue(812, 42, 0.75), 5: Tissue(1932, 275, 1.0), 6: Tissue(1932, 275, 1.0),
          7: Tissue(1471, 47, 0.8)},
}
# fmt: on


# -- the phantom --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ellipse:
    label: int
    centre_mm: tuple[float, float]  # (inferior, left-right) from the image centre
    axes_mm: tuple[float, float]  # semi-axes


# Painted in order, each over the previous ones: a coronal-like cut through the chest with the
# heart above the liver, sized for a 192-mm field of view (128 pixels of 1.5 mm).
PHANTOM = (
    Ellipse(LABELS["fat"], (0, 0), (76, 90)),
    Ellipse(LABELS["muscle"], (0, 0), (69, 83)),
    Ellipse(LABELS["lung"], (-15, -40), (40, 28)),
    Ellipse(LABELS["lung"], (-15, 40), (40, 28)),
    Ellipse(LABELS["liver"], (45, -15), (22, 52)),
    Ellipse(LABELS["rv_blood"], (-10, -16), (20, 15)),
    Ellipse(LABELS["myocardium"], (-8, 8), (28, 26)),
    Ellipse(LABELS["lv_blood"], (-8, 10), (17, 15)),
)
HEART_MM = np.array([-8.0, 8.0])


def render(points_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Tissue weights (len(LABELS), *points) of the phantom at physical points (2, *points).

    Each ellipse covers a point with a fraction ramping from 0 to 1 over ``edge_mm`` across
    its border (0: hard edges), composited over what is below, so weights sum to 1.
    Evaluated analytically, so a moved phantom is exact, not an interpolated image.
    """
    weights = np.zeros((len(LABELS), *points_mm.shape[1:]))
    weights[LABELS["air"]] = 1.0
    for shape in PHANTOM:
        u = (points_mm[0] - shape.centre_mm[0]) / shape.axes_mm[0]
        v = (points_mm[1] - shape.centre_mm[1]) / shape.axes_mm[1]
        r = np.hypot(u, v)
        if edge_mm > 0:
            # Distance to the border along the ray from the centre: |p| (1 - 1/r), exact on
            # circles and close to the border (where it matters) on ellipses.
            distance = np.hypot(
                points_mm[0] - shape.centre_mm[0], points_mm[1] - shape.centre_mm[1]
            ) * (1 - 1 / np.maximum(r, 1e-9))
            cover = np.clip(0.5 - distance / edge_mm, 0.0, 1.0)
        else:
            cover = (r <= 1.0).astype(np.float64)
        weights *= 1.0 - cover
        weights[shape.label] += cover
    return weights


# -- signal models ------------------------------------------------------------------------


def molli_signal(ti_ms, t1_ms, pd=1.0, look_locker: float = 0.85):
    """|A - B exp(-TI/T1*)| with A = PD r, B = PD (1 + r), T1* = r T1 (see module doc)."""
    a, b = pd * look_locker, pd * (1.0 + look_locker)
    t1_star = look_locker * np.asarray(t1_ms, dtype=np.float64)
    return np.abs(a - b * np.exp(-np.asarray(ti_ms, dtype=np.float64) / t1_star))


def msasha_signal(ts_ms, te_ms, t1_ms, t2_ms, pd=1.0, t_d_ms: float = 0.0):
    """A (1 - e^(-t_d/T1) (1 - e^(-TE/T2) + e^(-TS/T1) e^(-TE/T2))), A = PD (Chow et al.)."""
    t1 = np.asarray(t1_ms, dtype=np.float64)
    e1 = np.exp(-np.asarray(ts_ms, dtype=np.float64) / t1)  # TS = inf: no saturation
    e2 = np.exp(-np.asarray(te_ms, dtype=np.float64) / np.asarray(t2_ms, dtype=np.float64))
    ed = np.exp(-t_d_ms / t1)
    return pd * (1.0 - ed * (1.0 - e2 + e1 * e2))


# The kidney MOLLI series' inversion times (../shared/data/molli_kidney, two inversions).
MOLLI_TI_MS = (118.0, 201.0, 1118.0, 1201.0, 2118.0, 2201.0, 3118.0, 4118.0)
# mSASHA's nine images as Chow et al. describe them: one unprepared, six saturation recoveries,
# two saturation recoveries with a T2 preparation (the last is the paper's template). The
# timings are illustrative, not the published protocol's. Rows: (TS, TE) in ms.
# fmt: off
MSASHA_TIMES_MS = ((np.inf, 0.0), (100.0, 0.0), (200.0, 0.0), (300.0, 0.0), (400.0, 0.0),
                   (500.0, 0.0), (600.0, 0.0), (600.0, 30.0), (600.0, 55.0))
# fmt: on
MSASHA_T_D_MS = 30.0


def signals(
    kind: str,
    times: np.ndarray,
    field_t: float,
    look_locker: float = 0.85,
    t_d_ms: float = MSASHA_T_D_MS,
) -> np.ndarray:
    """Noise-free signal (N, len(LABELS)) of every tissue at every frame's times."""
    tissues = [TISSUES[field_t][label] for label in range(len(LABELS))]
    t1 = np.array([t.t1_ms for t in tissues])
    t2 = np.array([t.t2_ms for t in tissues])
    pd = np.array([t.pd for t in tissues])
    if kind == "molli":
        return molli_signal(times[:, None], t1, pd, look_locker)
    return msasha_signal(times[:, :1], times[:, 1:], t1, t2, pd, t_d_ms)


# -- motion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breathing:
    """Respiratory displacement psi_n(p) in mm at points p (mm) of frame n: frame n shows at p
    what the template shows at p + psi_n(p). psi_n = s_n * (translation + deformation), with
    s_n the frame's breathing position relative to the template's (0 at the template, and
    |s_n| = 1 for the frame farthest from it).

    The translation is ``motion_mm`` along the inferior axis (plus a smaller left-right part),
    full near the heart and fading to 40 % at the body wall, which moves less; the deformation
    is a few random sinusoidal modes of ``deformation * motion_mm`` amplitude and 80-200 mm
    wavelength, each frame with its own mode weights.
    """

    position: np.ndarray  # (N,) s_n in [-1, 1]
    motion_mm: float
    lateral: float  # left-right translation per unit of inferior translation
    mode_direction: np.ndarray  # (M, 2) unit vectors
    mode_wave: np.ndarray  # (M, 2) wave vectors, rad/mm
    mode_phase: np.ndarray  # (M,)
    mode_weight: np.ndarray  # (N, M) amplitude in mm

    def __call__(self, n: int, points_mm: np.ndarray) -> np.ndarray:
        offset = points_mm - HEART_MM.reshape(2, *[1] * (points_mm.ndim - 1))
        envelope = 0.4 + 0.6 * np.exp(-(offset**2).sum(axis=0) / (2 * 50.0**2))
        psi = np.stack([envelope, self.lateral * envelope]) * self.motion_mm
        for m in range(len(self.mode_phase)):
            wave = np.tensordot(self.mode_wave[m], points_mm, axes=1) + self.mode_phase[m]
            direction = self.mode_direction[m].reshape(2, *[1] * (points_mm.ndim - 1))
            psi = psi + self.mode_weight[n, m] * direction * np.sin(wave)
        return self.position[n] * psi


def random_breathing(
    rng: np.random.Generator,
    frames: int,
    template: int,
    motion_mm: float,
    deformation: float,
    modes: int = 3,
) -> Breathing:
    position = rng.uniform(0.0, 1.0, frames)  # free breathing: anywhere in the cycle
    position -= position[template]
    position /= max(np.abs(position).max(), 1e-12)  # the farthest frame moves motion_mm
    angle = rng.uniform(0, 2 * np.pi, (2, modes))
    wavelength = rng.uniform(80.0, 200.0, modes)
    wave = np.stack([np.cos(angle[1]), np.sin(angle[1])], axis=1) * (
        2 * np.pi / wavelength[:, None]
    )
    amplitude = deformation * motion_mm / np.sqrt(modes)
    return Breathing(
        position=position,
        motion_mm=motion_mm,
        lateral=rng.uniform(-0.2, 0.2),
        mode_direction=np.stack([np.cos(angle[0]), np.sin(angle[0])], axis=1),
        mode_wave=wave,
        mode_phase=rng.uniform(0, 2 * np.pi, modes),
        mode_weight=amplitude * rng.uniform(0.5, 1.5, (frames, modes)),
    )


def invert(
    psi: Callable[[np.ndarray], np.ndarray],
    points_mm: np.ndarray,
    iterations: int = 100,
    tol_mm: float = 1e-6,
) -> np.ndarray:
    """phi with points + phi + psi(points + phi) = points: the displacement on the template
    grid that registration should find, by fixed-point iteration (psi is a small, smooth
    perturbation, a contraction; tens of iterations reach 1e-6 mm)."""
    phi = -psi(points_mm)
    for _ in range(iterations):
        update = -psi(points_mm + phi)
        if np.max(np.abs(update - phi)) < tol_mm:
            return update
        phi = update
    return phi


# -- the series ---------------------------------------------------------------------------

KINDS = ("molli", "msasha")


@dataclass
class Series:
    kind: str
    frames: np.ndarray  # (N, H, W) float32: moved, noisy frames as a scanner gives them
    fields: np.ndarray  # (N, 2, H, W) float32 voxels: template grid -> frame (see module doc)
    reference: np.ndarray  # (N, H, W) float32: motion-free, noise-free frames (template grid)
    tissue_map: np.ndarray  # (H, W) int16: LABELS at the template position
    frame_tissue_maps: np.ndarray  # (N, H, W) int16: LABELS where each frame shows them
    times: np.ndarray  # molli: (N,) TI in ms; msasha: (N, 2) (TS, TE) in ms
    spacing_mm: float
    template: int
    field_t: float
    meta: dict = field(default_factory=dict)

    def displacement_mm(self) -> np.ndarray:
        """The true fields as ``riir register-series`` writes them for ``write_nifti``'s file:
        (N, H, W, 2) millimetre vectors in ITK order (x along W, y along H)."""
        return np.moveaxis(self.fields[:, ::-1] * self.spacing_mm, 1, -1)


def _grid_mm(shape: tuple[int, int], spacing_mm: float) -> np.ndarray:
    axes = [(np.arange(n) - (n - 1) / 2) * spacing_mm for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def simulate_series(
    kind: str = "molli",
    shape: tuple[int, int] = (128, 128),
    spacing_mm: float = 1.5,
    motion_mm: float = 8.0,
    seed: int = 0,
    *,
    times=None,
    template: int = -1,
    field_t: float = 3.0,
    noise: str = "rician",
    noise_std: float = 0.02,
    edge_mm: float | None = None,
    deformation: float = 0.15,
    look_locker: float = 0.85,
    t_d_ms: float = MSASHA_T_D_MS,
) -> Series:
    """A simulated series with its true motion.

    ``times``: MOLLI inversion times (N,) or mSASHA (TS, TE) pairs (N, 2) in ms (defaults
    ``MOLLI_TI_MS``, ``MSASHA_TIMES_MS``). ``template``: the frame the others are registered
    to, which does not move (default the last, as the paper does for mSASHA). ``noise``:
    ``"rician"`` (magnitude of complex Gaussian noise), ``"gaussian"`` or ``"none"``, std
    ``noise_std`` relative to a proton density of 1. ``edge_mm``: width of the tissue borders
    (default one pixel; 0 for hard edges).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got '{kind}'")
    if field_t not in TISSUES:
        raise ValueError(f"field_t must be one of {sorted(TISSUES)} (tesla); got {field_t}")
    if noise not in ("rician", "gaussian", "none"):
        raise ValueError(f"noise must be rician, gaussian or none; got '{noise}'")
    default = MOLLI_TI_MS if kind == "molli" else MSASHA_TIMES_MS
    times = np.asarray(default if times is None else times, dtype=np.float64)
    if times.shape[:1] == (0,) or times.shape[1:] != (() if kind == "molli" else (2,)):
        raise ValueError(
            f"{kind} times must be {'(N,)' if kind == 'molli' else '(N, 2)'}; "
            f"got shape {times.shape}"
        )
    frames_n = len(times)
    template %= frames_n
    edge_mm = spacing_mm if edge_mm is None else edge_mm
    rng = np.random.default_rng(seed)
    breathing = random_breathing(rng, frames_n, template, motion_mm, deformation)
    points = _grid_mm(tuple(shape), spacing_mm)
    signal = signals(kind, times, field_t, look_locker, t_d_ms)  # (N, tissues)

    at_rest = render(points, edge_mm)
    frames, fields, reference, frame_maps = [], [], [], []
    for n in range(frames_n):
        psi = partial(breathing, n)
        moved = render(points + psi(points), edge_mm)
        frame_maps.append(moved.argmax(axis=0))
        frames.append(np.tensordot(signal[n], moved, axes=1))
        reference.append(np.tensordot(signal[n], at_rest, axes=1))
        fields.append(invert(psi, points) / spacing_mm)
    frames_arr = np.stack(frames)
    if noise != "none":
        real = frames_arr + rng.normal(0.0, noise_std, frames_arr.shape)
        if noise == "rician":
            frames_arr = np.hypot(real, rng.normal(0.0, noise_std, frames_arr.shape))
        else:
            frames_arr = real
    return Series(
        kind=kind,
        frames=frames_arr.astype(np.float32),
        fields=np.stack(fields).astype(np.float32),
        reference=np.stack(reference).astype(np.float32),
        tissue_map=at_rest.argmax(axis=0).astype(np.int16),
        frame_tissue_maps=np.stack(frame_maps).astype(np.int16),
        times=times,
        spacing_mm=float(spacing_mm),
        template=template,
        field_t=float(field_t),
        meta={
            "seed": seed,
            "motion_mm": motion_mm,
            "noise": noise,
            "noise_std": noise_std,
            "edge_mm": edge_mm,
            "deformation": deformation,
            "look_locker": look_locker,
            "t_d_ms": t_d_ms,
            "breathing_position": breathing.position.tolist(),
        },
    )


def write_nifti(series: Series, path: str | os.PathLike, slice_mm: float = 8.0) -> Path:
    """Write the frames as a 4-D NIfTI (X=W, Y=H, 1, N) with the pixel spacing, identity
    direction and origin at the first pixel: the input ``riir register-series`` takes."""
    frames = []
    for frame in series.frames:
        image = sitk.GetImageFromArray(frame[None])  # numpy (1, H, W): ITK (W, H, 1)
        image.SetSpacing((series.spacing_mm, series.spacing_mm, float(slice_mm)))
        frames.append(image)
    return imageio.write_image(sitk.JoinSeries(frames), path)
