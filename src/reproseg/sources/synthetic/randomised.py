"""Domain-randomised synthetic abdominal CT (``source.synthetic.style: randomised``).

Why: a model trained on one fixed phantom learns that phantom. To transfer to real CT it
has to see so many variations of anatomy and acquisition that a real scan is just one more
(domain randomisation). This style keeps the phantom's liver (the Couinaud segments follow
simulated veins, :func:`.phantom._liver_fields`) and randomises everything around it, each
quantity drawn uniformly per scan from a ``[low, high]`` range of
``source.synthetic.randomised`` (:class:`reproseg.config.RandomisedSynthetic`):

* **anatomy**: patient size, fat, liver pose, smooth deformations, left-lobe extent, dome
  height and a Riedel lobe; spleen, kidneys (cortex and medulla), stomach (wall, fluid, gas),
  gallbladder, pancreas with the splenic vein, small bowel and colon, aorta, IVC, portal and
  hepatic veins, spine, ribs with costal cartilage, lungs and heart;
* **contrast**: the phase (native, arterial, portal venous) sets each tissue's HU range
  (:data:`PHASE_HU`) and the HU of every tissue is drawn per scan, plus a calibration shift;
* **acquisition**: field of view (in-plane spacing), slice thickness (partial volume: the
  image is rendered on sub-slices and averaged over the slice), coverage and craniocaudal
  position (chest included or not, liver dome cut off), in-plane blur, CT-like noise with a
  ramp-shaped power spectrum (correlated, grain size drawn), streaks, beam-hardening cupping
  and dark bands between bones.

Speed: tissues are painted as a uint8 class map, each organ only inside its bounding box;
HU come from one lookup; smooth fields are rendered coarse and upsampled. Determinism: all
draws come from the case's seeded streams, so a seed gives byte-identical volumes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import fft, ndimage

from reproseg.config import COUINAUD_LABELS, RandomisedSynthetic
from reproseg.sources.synthetic.phantom import (
    _LIVER_BOX,
    HU_MAX,
    HU_MIN,
    Anatomy,
    SyntheticVolume,
    _liver_fields,
    sample_anatomy,
)

# --------------------------------------------------------------------------------------------
# Tissues and their HU per contrast phase
# --------------------------------------------------------------------------------------------

#: Tissue classes of the internal class map (index = position).
TISSUES: tuple[str, ...] = (
    "air",
    "fat",
    "muscle",
    "visceral_fat",
    "liver",
    "liver_vessel",
    "lesion",
    "gallbladder",
    "spleen",
    "kidney_cortex_r",
    "kidney_medulla_r",
    "kidney_cortex_l",
    "kidney_medulla_l",
    "stomach_wall",
    "stomach_content",
    "gas",
    "pancreas",
    "aorta",
    "ivc",
    "portal_vein",
    "splenic_vein",
    "bowel_wall",
    "bowel_content",
    "colon_wall",
    "colon_content",
    "lung",
    "heart",
    "bone_cortex",
    "bone_marrow",
    "disc",
    "spinal_canal",
    "rib",
    "cartilage",
    "colon_gas",
    "table",
    "bladder",
)
T = {name: i for i, name in enumerate(TISSUES)}

#: HU range (low, high) of each tissue in the native, arterial and portal-venous phase, from
#: the usual textbook values; the HU of a tissue is drawn per scan within its range.
PHASE_HU: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "air": ((-1000, -1000), (-1000, -1000), (-1000, -1000)),
    "fat": ((-120, -85), (-120, -85), (-120, -85)),
    "muscle": ((40, 60), (45, 65), (50, 70)),
    "visceral_fat": ((-115, -80), (-115, -80), (-110, -75)),
    "liver": ((45, 70), (55, 85), (90, 135)),
    "liver_vessel": ((30, 50), (60, 120), (140, 210)),
    "gallbladder": ((0, 25), (0, 25), (0, 25)),
    "spleen": ((40, 55), (80, 140), (100, 140)),
    "kidney_cortex_r": ((28, 42), (150, 240), (150, 210)),
    "kidney_medulla_r": ((25, 40), (50, 110), (130, 200)),
    "stomach_wall": ((35, 50), (70, 110), (80, 120)),
    "stomach_content": ((0, 35), (0, 35), (0, 35)),
    "gas": ((-1000, -950), (-1000, -950), (-1000, -950)),
    "pancreas": ((35, 50), (90, 150), (80, 120)),
    "aorta": ((35, 50), (220, 420), (140, 200)),
    "ivc": ((35, 50), (70, 130), (120, 175)),
    "portal_vein": ((35, 50), (90, 170), (150, 215)),
    "bowel_wall": ((35, 50), (60, 110), (70, 120)),
    "bowel_content": ((-5, 30), (-5, 30), (-5, 30)),
    "colon_wall": ((35, 50), (60, 100), (70, 110)),
    "colon_content": ((-150, 40), (-150, 40), (-150, 40)),
    "lung": ((-900, -820), (-900, -820), (-900, -820)),
    "heart": ((35, 50), (150, 350), (120, 190)),
    "bone_cortex": ((600, 1000), (600, 1000), (600, 1000)),
    "bone_marrow": ((150, 300), (150, 300), (160, 310)),
    "disc": ((70, 100), (70, 100), (70, 110)),
    "spinal_canal": ((10, 30), (10, 30), (10, 30)),
    "rib": ((350, 800), (350, 800), (350, 800)),
    "cartilage": ((100, 200), (100, 200), (100, 200)),
    "table": ((150, 450), (150, 450), (150, 450)),
    "bladder": ((0, 20), (0, 20), (0, 25)),
}
#: Tissues that share another's HU draw (left/right organs, gas pockets).
_SAME_HU = {
    "kidney_cortex_l": "kidney_cortex_r",
    "kidney_medulla_l": "kidney_medulla_r",
    "splenic_vein": "portal_vein",
    "colon_gas": "gas",
}
#: Lesion HU relative to the liver, per phase (hypodense, or hyper-enhancing when arterial).
_LESION_DELTA = ((-45.0, -15.0), (-35.0, 45.0), (-70.0, -25.0))
PHASES = ("native", "arterial", "portal_venous")

#: Label names (as in TotalSegmentator's class map) that ``labels`` may ask for, and the
#: tissues they cover. ``liver`` (or the 8 Couinaud names on 1-8) label the liver.
ORGAN_TISSUES: dict[str, tuple[str, ...]] = {
    "spleen": ("spleen",),
    "kidney_right": ("kidney_cortex_r", "kidney_medulla_r"),
    "kidney_left": ("kidney_cortex_l", "kidney_medulla_l"),
    "gallbladder": ("gallbladder",),
    "stomach": ("stomach_wall", "stomach_content"),
    "pancreas": ("pancreas",),
    "aorta": ("aorta",),
    "inferior_vena_cava": ("ivc",),
    "portal_vein_and_splenic_vein": ("portal_vein", "splenic_vein"),
    "small_bowel": ("bowel_wall", "bowel_content"),
    "colon": ("colon_wall", "colon_content", "colon_gas"),
    "lung": ("lung",),
    "heart": ("heart",),
    "vertebrae": ("bone_cortex", "bone_marrow", "disc"),
    "ribs": ("rib", "cartilage"),
    "urinary_bladder": ("bladder",),
}
_LIVER_TISSUES = ("liver", "liver_vessel", "lesion")


@dataclass(frozen=True)
class LabelPlan:
    """How the class map becomes the label: Couinaud segments or whole liver, plus organs."""

    couinaud: bool
    liver_value: int  # value of the whole liver when not couinaud (0: liver not labelled)
    organs: tuple[tuple[int, str], ...]  # (label value, organ name)


def label_plan(labels: dict[int, str]) -> LabelPlan:
    """Read ``labels`` by name: Couinaud names on 1-8, or ``liver``/any single liver class
    on 1, plus any of :data:`ORGAN_TISSUES`. Anything else is a clear error."""
    labels = {int(k): str(v) for k, v in labels.items()}
    couinaud = all(labels.get(k) == COUINAUD_LABELS[k] for k in range(1, 9))
    rest = {k: v for k, v in labels.items() if k != 0 and not (couinaud and k <= 8)}
    liver_value = 0
    organs = []
    for value, name in sorted(rest.items()):
        if name in ORGAN_TISSUES:
            organs.append((value, name))
        elif name == "liver" or (value == 1 and not couinaud and len(labels) == 2):
            liver_value = value
        else:
            raise ValueError(
                f"labels: {value}: {name!r} is not something the randomised synthetic source "
                f"draws; use the Couinaud names on 1-8, 'liver', or {sorted(ORGAN_TISSUES)}"
            )
    if not couinaud and not liver_value:
        raise ValueError(
            "labels: the randomised synthetic source needs 'liver' or the Couinaud map"
        )
    return LabelPlan(couinaud, liver_value, tuple(organs))


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _draw(rng: np.random.Generator, rng_range: list[float]) -> float:
    """One uniform draw from ``[low, high]`` (the rng advances even when low == high, so a
    fixed value never shifts the other draws)."""
    return float(rng.uniform(rng_range[0], rng_range[1]))


@dataclass(frozen=True)
class Patient:
    """What is fixed for a patient: the phantom's anatomy plus the randomised extras."""

    base: Anatomy
    scale: float  # overall size (all template mm are multiplied by it)
    extra_fat: float  # template mm of fat added around the body
    left_lobe: float
    dome: float
    riedel: bool
    kidney_shift: tuple[float, float]  # right, left craniocaudal offsets (mm)
    spleen_size: float
    stomach_fill: float  # fraction of the stomach height that is fluid (rest gas)
    rib_gap: float
    rib12_z: float  # posterior end of the 12th rib, below the liver centre (mm)
    disc_phase: float
    colon_offset: tuple[float, float]
    oral_contrast: bool
    table_gap: float  # mm between the back and the CT table; < 0: no table in view
    bladder_fill: float  # size of the urinary bladder (x template)


@dataclass(frozen=True)
class RScan:
    """What changes between scans: phase, tissue HU, geometry and image degradation."""

    phase: str
    hu: tuple[float, ...]  # per tissue, indexed like TISSUES
    spacing: tuple[float, float, float]
    n_slices: int
    sub_slices: int  # sub-slices averaged per slice (partial volume over the thickness)
    z_offset: float
    shift_xy: tuple[float, float]
    yaw: float
    noise_sd: float
    noise_grain: float
    psf: float
    streak: float
    beam_hardening: float
    lesion_growth: float


def sample_patient(rng: np.random.Generator, cfg: RandomisedSynthetic, lesions: float) -> Patient:
    """Draw a patient: the phantom's anatomy (its own child stream) plus the extras."""
    base = sample_anatomy(rng.spawn(1)[0], lesions)
    amp = _draw(rng, cfg.liver_deform_mm)
    deform = []
    for _ in range(6):  # smooth random deformation: waves of random direction and length
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * math.pi / rng.uniform(90, 260)
        a = rng.normal(size=3) * amp / math.sqrt(3.0)
        deform.append((*(direction * k), float(rng.uniform(0, 2 * math.pi)), *a))
    extra_fat = _draw(rng, cfg.extra_fat_mm)
    base = dataclasses.replace(
        base,
        deform=tuple(tuple(float(v) for v in d) for d in deform),
        fat=base.fat + extra_fat,
        body_a=base.body_a + extra_fat,
        body_b=base.body_b + extra_fat,
    )
    return Patient(
        base=base,
        scale=_draw(rng, cfg.patient_scale),
        extra_fat=extra_fat,
        left_lobe=_draw(rng, cfg.left_lobe_scale),
        dome=_draw(rng, cfg.dome_scale),
        riedel=bool(rng.random() < cfg.riedel_probability),
        kidney_shift=(float(rng.uniform(-20, 15)), float(rng.uniform(-10, 25))),
        spleen_size=float(rng.uniform(0.75, 1.3)),
        stomach_fill=float(rng.uniform(0.3, 1.0)),
        rib_gap=float(rng.uniform(22, 30)),
        rib12_z=float(rng.uniform(40, 80)),
        disc_phase=float(rng.uniform(0, 2 * math.pi)),
        colon_offset=(float(rng.uniform(-12, 12)), float(rng.uniform(-15, 15))),
        oral_contrast=bool(rng.random() < 0.25),
        table_gap=float(rng.uniform(0, 25)) if rng.random() < 0.8 else -1.0,
        bladder_fill=float(rng.uniform(0.4, 1.3)),
    )


def sample_rscan(
    rng: np.random.Generator, cfg: RandomisedSynthetic, shape: tuple[int, int, int]
) -> RScan:
    """Draw a scan: phase and HU per tissue, field of view, slices, noise and artefacts."""
    phase = cfg.phases[int(rng.integers(len(cfg.phases)))]
    p = PHASES.index(phase)
    shift = _draw(rng, cfg.hu_shift)
    hu = {}
    for name, ranges in PHASE_HU.items():
        lo, hi = ranges[p]
        hu[name] = float(rng.uniform(lo, hi)) + (0.0 if name in ("air", "gas") else shift)
    lo, hi = _LESION_DELTA[p]
    hu["lesion"] = hu["liver"] + float(rng.uniform(lo, hi))
    for name, same in _SAME_HU.items():
        hu[name] = hu[same]
    fov = _draw(rng, cfg.fov_mm)
    s_xy = round(fov / max(shape[0], shape[1]), 4)
    thickness = round(_draw(rng, cfg.slice_thickness_mm), 3)
    coverage = _draw(rng, cfg.z_coverage_mm)
    n_slices = int(min(max(8, round(coverage / thickness)), shape[2]))
    return RScan(
        phase=phase,
        hu=tuple(hu[name] for name in TISSUES),
        spacing=(s_xy, s_xy, thickness),
        n_slices=n_slices,
        sub_slices=2 * math.ceil((thickness / 1.25 - 1) / 2) + 1 if thickness > 1.25 else 1,
        z_offset=_draw(rng, cfg.z_offset_mm),
        shift_xy=(float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10))),
        yaw=float(np.deg2rad(rng.uniform(-5, 5))),
        noise_sd=_draw(rng, cfg.noise_hu),
        noise_grain=_draw(rng, cfg.noise_grain_mm),
        psf=_draw(rng, cfg.psf_mm),
        streak=_draw(rng, cfg.streak_hu),
        beam_hardening=_draw(rng, cfg.beam_hardening_hu),
        lesion_growth=1.0,
    )


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """The (sub-slice) voxel grid in template mm: ``t = R(yaw) (world - shift) / scale``.

    ``tx``/``ty`` are (X, Y, 1) and ``tz`` (1, 1, Z); masks are built by broadcasting.
    """

    shape: tuple[int, int, int]
    origin: np.ndarray  # world mm of voxel 0 per axis
    step: np.ndarray  # world mm per voxel per axis
    shift: np.ndarray
    cos_yaw: float
    sin_yaw: float
    scale: float
    tx: np.ndarray
    ty: np.ndarray
    tz: np.ndarray

    def box(self, lo: Any, hi: Any) -> tuple[slice, slice, slice] | None:
        """Voxel box holding the template-mm box ``[lo, hi]`` (any yaw), None if outside."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        half = max(hi[0] - lo[0], hi[1] - lo[1]) / 2.0 * 1.42  # rotation-safe in-plane
        c = (lo + hi) / 2.0 * self.scale
        cx = self.cos_yaw * c[0] - self.sin_yaw * c[1] + self.shift[0]
        cy = self.sin_yaw * c[0] + self.cos_yaw * c[1] + self.shift[1]
        h = half * self.scale
        w_lo = np.array([cx - h, cy - h, lo[2] * self.scale + self.shift[2]])
        w_hi = np.array([cx + h, cy + h, hi[2] * self.scale + self.shift[2]])
        i_lo = np.maximum(np.floor((w_lo - self.origin) / self.step), 0).astype(int)
        i_hi = np.minimum(np.ceil((w_hi - self.origin) / self.step) + 1, self.shape).astype(int)
        if np.any(i_hi <= i_lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(i_lo, i_hi, strict=True))  # type: ignore[return-value]

    def slab(self, z0: int, z1: int) -> _Frame:
        """The same frame restricted to sub-slices ``z0:z1`` (rendering goes slab by slab,
        so memory does not grow with the slice count)."""
        origin = self.origin.copy()
        origin[2] += z0 * self.step[2]
        shape = (self.shape[0], self.shape[1], z1 - z0)
        return dataclasses.replace(self, shape=shape, origin=origin, tz=self.tz[:, :, z0:z1])

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
        """Template coordinates inside ``box`` (broadcastable)."""
        return self.tx[box[0], box[1]], self.ty[box[0], box[1]], self.tz[:, :, box[2]]


def _frame(patient: Patient, scan: RScan, shape_xy: tuple[int, int]) -> tuple[_Frame, np.ndarray]:
    """The sub-slice grid (``sub_slices`` per output slice) and the output grid's affine.

    The volume centre sits ``z_offset`` mm above the liver centre, so the coverage decides
    whether the chest is in view and whether the liver dome is cut off.
    """
    sx, sy, sz = scan.spacing
    n, k = scan.n_slices, scan.sub_slices
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scan.spacing)
    affine[:3, 3] = [-(m - 1) / 2.0 * s for m, s in zip((*shape_xy, n), scan.spacing, strict=True)]
    dz = sz / k
    origin = np.array([affine[0, 3], affine[1, 3], affine[2, 3] - (k - 1) / 2.0 * dz])
    step = np.array([sx, sy, dz])
    lc_z = float(patient.base.liver_center[2])
    shift = np.array([*scan.shift_xy, -(patient.scale * lc_z + scan.z_offset)])
    shape = (int(shape_xy[0]), int(shape_xy[1]), n * k)
    axes = [(origin[i] + step[i] * np.arange(shape[i]) - shift[i]) for i in range(3)]
    cy, sn = math.cos(scan.yaw), math.sin(scan.yaw)
    wx, wy = axes[0][:, None], axes[1][None, :]
    tx = ((cy * wx + sn * wy) / patient.scale).astype(np.float32)[:, :, None]
    ty = ((-sn * wx + cy * wy) / patient.scale).astype(np.float32)[:, :, None]
    tz = (axes[2] / patient.scale).astype(np.float32)[None, None, :]
    return _Frame(shape, origin, step, shift, cy, sn, patient.scale, tx, ty, tz), affine


def _ell(x: Any, y: Any, z: Any, c: Any, r: Any) -> np.ndarray:
    """Normalised ellipsoid radius (<= 1 inside), axis-aligned, broadcastable."""
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2


def _paint_ellipsoid(
    fr: _Frame, cls: np.ndarray, c: Any, r: Any, value: int, where: tuple[int, ...]
) -> None:
    """Set ``value`` inside an ellipsoid (template mm) where the class is one of ``where``."""
    c, r = np.asarray(c, float), np.asarray(r, float)
    box = fr.box(c - r, c + r)
    if box is None:
        return
    x, y, z = fr.coords(box)
    sub = cls[box]
    sub[(_ell(x, y, z, c.tolist(), r.tolist()) <= 1.0) & np.isin(sub, where)] = value


def _paint_tube(
    fr: _Frame,
    cls: np.ndarray,
    points: list[tuple[float, float, float]],
    radius: float,
    value: int,
    where: tuple[int, ...],
) -> None:
    """Set ``value`` within ``radius`` of a polyline (template mm), segment by segment."""
    pts = np.asarray(points, float)
    for a, b in itertools.pairwise(pts):
        box = fr.box(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
        if box is None:
            continue
        x, y, z = fr.coords(box)
        d = (b - a).tolist()
        length2 = max(d[0] ** 2 + d[1] ** 2 + d[2] ** 2, 1e-6)
        rx, ry, rz = x - float(a[0]), y - float(a[1]), z - float(a[2])
        t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / length2, 0.0, 1.0)
        dist2 = (rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2
        sub = cls[box]
        sub[(dist2 <= radius * radius) & np.isin(sub, where)] = value


# --------------------------------------------------------------------------------------------
# Anatomy painting (class map on the sub-slice grid)
# --------------------------------------------------------------------------------------------


def _diaphragm(p: Patient, fr: _Frame) -> np.ndarray:
    """Height (template mm) of the diaphragm over each (x, y): two domes, right higher."""
    an = p.base
    lc = [float(v) for v in an.liver_center]
    dome = 10.0 + (an.dome_z - 10.0) * p.dome
    ry = (0.8 * (fr.ty - lc[1])) ** 2
    dome_r = lc[2] + dome - ((fr.tx - lc[0] - 15) ** 2 + ry) / 260.0
    dome_l = lc[2] + dome - 14.0 - ((fr.tx + 65) ** 2 + ry) / 260.0
    return np.maximum(dome_r, dome_l)


def _paint_body(p: Patient, fr: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Air, fat, muscle wall and the cavity (visceral fat); returns (classes, depth mm)."""
    an = p.base
    grow = (1.0 - 0.0006 * fr.tz).astype(np.float32)
    half_b = np.where(fr.ty >= 0, an.body_b, 0.95 * an.body_b).astype(np.float32)
    pw = an.body_p
    rad2d = (np.abs(fr.tx / an.body_a) ** pw + np.abs(fr.ty / half_b) ** pw) ** (1.0 / pw)
    depth = (1.0 - rad2d / grow) * np.float32(0.5 * (an.body_a + an.body_b))
    cls = np.full(fr.shape, T["air"], dtype=np.uint8)
    cls[depth >= 0] = T["fat"]
    cls[depth >= an.fat] = T["muscle"]
    cls[depth >= an.fat + an.muscle] = T["visceral_fat"]
    if p.table_gap >= 0:  # CT table: two thin curved plates under the patient
        top = -0.95 * an.body_b - p.table_gap + fr.tx**2 / 4000.0
        for y0 in (top, top - 45.0):
            plate = (fr.ty <= y0) & (fr.ty > y0 - 4.0) & (np.abs(fr.tx) < 230.0)
            cls[np.broadcast_to(plate & (depth < 0), fr.shape)] = T["table"]
    return cls, depth


def _paint_thorax(p: Patient, fr: _Frame, cls: np.ndarray, diaphragm: np.ndarray) -> None:
    """Lungs above the diaphragm, the heart above the left dome."""
    an = p.base
    lc = [float(v) for v in an.liver_center]
    top = fr.box([-400, -400, float(diaphragm.min())], [400, 400, 1e5])
    if top is None:
        return
    sub = cls[top]
    sub[(sub == T["visceral_fat"]) & (fr.tz[:, :, top[2]] > diaphragm)] = T["lung"]
    dome = 10.0 + (an.dome_z - 10.0) * p.dome
    heart_c = (-30.0, an.spine_y + 95.0, lc[2] + dome + 40.0)
    _paint_ellipsoid(fr, cls, heart_c, (62.0, 48.0, 55.0), T["heart"], (T["lung"],))


def _paint_organs(p: Patient, fr: _Frame, cls: np.ndarray) -> None:
    """Kidneys (cortex, medulla), spleen, stomach (wall, fluid, gas), pancreas with the
    splenic vein, psoas and paraspinal muscles; only into visceral fat."""
    an = p.base
    lc = [float(v) for v in an.liver_center]
    s = an.spine_y
    vf = (T["visceral_fat"],)
    for side, dz, cortex, medulla in (
        (1.0, p.kidney_shift[0] - 95.0, "kidney_cortex_r", "kidney_medulla_r"),
        (-1.0, p.kidney_shift[1] - 75.0, "kidney_cortex_l", "kidney_medulla_l"),
    ):
        c = (side * 68.0, s + 5.0, lc[2] + dz)
        _paint_ellipsoid(fr, cls, c, (26.0, 28.0, 55.0), T[cortex], vf)
        _paint_ellipsoid(fr, cls, c, (17.0, 19.0, 44.0), T[medulla], (T[cortex],))
    k = p.spleen_size
    _paint_ellipsoid(
        fr, cls, (-100.0, s + 25.0, lc[2] + 5.0), (28.0 * k, 48.0 * k, 55.0 * k), T["spleen"], vf
    )
    # Stomach: fundus/body and antrum; wall, then fluid below the level and gas above it.
    parts = (((-58.0, s + 95.0, lc[2] + 5.0), (42.0, 36.0, 50.0)),)
    parts += (((-12.0, s + 112.0, lc[2] - 38.0), (30.0, 22.0, 24.0)),)
    for c, r in parts:
        _paint_ellipsoid(fr, cls, c, r, T["stomach_wall"], vf)
    for c, r in parts:
        inner = tuple(v - 4.0 for v in r)
        _paint_ellipsoid(fr, cls, c, inner, T["stomach_content"], (T["stomach_wall"],))
    c, r = parts[0]
    level = c[1] - r[1] + 2 * r[1] * p.stomach_fill
    box = fr.box(np.subtract(c, r), np.add(c, r))
    if box is not None:
        sub = cls[box]
        sub[(sub == T["stomach_content"]) & (fr.coords(box)[1] > level)] = T["gas"]
    pancreas = [
        (28.0, s + 58.0, lc[2] - 78.0),
        (5.0, s + 66.0, lc[2] - 62.0),
        (-40.0, s + 62.0, lc[2] - 48.0),
        (-85.0, s + 45.0, lc[2] - 32.0),
    ]
    for (a, b), rad in zip(itertools.pairwise(pancreas), (13.0, 10.0, 8.5)):
        _paint_tube(fr, cls, [a, b], rad, T["pancreas"], vf)
    vein = [(x, y - 9.0, z) for x, y, z in pancreas[1:]]
    _paint_tube(fr, cls, vein, 4.5, T["splenic_vein"], (*vf, T["pancreas"]))
    muscle = T["muscle"]
    for side in (-1.0, 1.0):
        _paint_ellipsoid(fr, cls, (side * 30.0, s - 42.0, 0.0), (24.0, 24.0, 1e5), muscle, vf)
        for j in range(4):  # psoas: thickening caudally
            z = lc[2] - 110.0 - 45.0 * j
            c = (side * (32.0 + 4.0 * j), s + 4.0, z)
            _paint_ellipsoid(fr, cls, c, (10.0 + 4.0 * j, 12.0 + 3.0 * j, 30.0), muscle, vf)


def _bowel_waves(rng: np.random.Generator) -> tuple[tuple[float, ...], ...]:
    """Six plane waves (kx, ky, kz, phase), the loop level and the colon gas threshold."""
    waves = []
    for _ in range(6):
        d = rng.normal(size=3)
        k = d / np.linalg.norm(d) * 2 * math.pi / rng.uniform(35, 70)
        waves.append((*(float(v) for v in k), float(rng.uniform(0, 2 * math.pi))))
    # level of the loops; gas threshold of the colon (gas fraction varies between scans)
    waves.append((float(rng.uniform(-0.3, 0.3)), float(rng.uniform(0.3, 1.4))))
    return tuple(waves)


def _paint_bowel(p: Patient, fr: _Frame, cls: np.ndarray, waves: tuple) -> None:
    """Colon frame (wall, mottled content, gas) and small-bowel loops (a smooth random
    field thresholded into walled ribbons) in the remaining visceral fat below the liver."""
    an = p.base
    lc = [float(v) for v in an.liver_center]
    s = an.spine_y
    ox, oz = p.colon_offset
    colon = [
        (75.0 + ox, s + 45.0, lc[2] - 230.0),
        (75.0 + ox, s + 50.0, lc[2] - 95.0 + oz),
        (55.0 + ox, s + 95.0, lc[2] - 75.0 + oz),
        (0.0, s + 125.0, lc[2] - 100.0 + oz),
        (-75.0 - ox, s + 85.0, lc[2] - 45.0 + oz),
        (-85.0 - ox, s + 40.0, lc[2] - 120.0),
        (-80.0 - ox, s + 40.0, lc[2] - 230.0),
        (-35.0, s + 45.0, lc[2] - 290.0),  # sigmoid
        (0.0, s + 15.0, lc[2] - 330.0),  # rectum
        (0.0, s + 10.0, lc[2] - 400.0),
    ]
    vf = (T["visceral_fat"],)
    _paint_tube(fr, cls, colon, 24.0, T["colon_wall"], vf)
    _paint_tube(fr, cls, colon, 21.0, T["colon_content"], (T["colon_wall"],))
    box = fr.box([-400, -400, -1e5], [400, 400, lc[2] - 30.0])
    if box is None:
        return
    x, y, z = fr.coords(box)
    field = np.zeros(cls[box].shape, dtype=np.float32)
    for kx, ky, kz, phase in waves[:6]:
        field += np.sin(kx * x + ky * y + kz * z + phase)
    field = np.abs(field * np.float32(1.0 / math.sqrt(3.0)) - np.float32(waves[6][0]))
    gas = field > waves[6][1]  # colon gas pockets where the field is far from its level
    sub = cls[box]
    sub[(sub == T["colon_content"]) & gas & (y > s + 40.0)] = T["colon_gas"]
    free = (sub == T["visceral_fat"]) & (y > s + 30.0)
    sub[free & (field < 0.3)] = T["bowel_wall"]
    sub[free & (field < 0.22)] = T["bowel_content"]


def _liver_local(p: Patient, u: list) -> list:
    """Shape variation of the liver template: the left lobe stretched or shortened, the dome
    raised or lowered (segments follow, they live in the same coordinates)."""
    ux, uy, uz = u
    ux = np.where(ux < -20.0, -20.0 + (ux + 20.0) / np.float32(p.left_lobe), ux)
    uz = np.where(uz > 10.0, 10.0 + (uz - 10.0) / np.float32(p.dome), uz)
    return [ux.astype(np.float32), uy, uz.astype(np.float32)]


def _paint_liver(
    p: Patient, scan: RScan, fr: _Frame, cls: np.ndarray, diaphragm: np.ndarray
) -> np.ndarray:
    """Liver (parenchyma, vessels, lesions), gallbladder and portal trunk; returns the
    Couinaud segment map (uint8, 0 outside the liver) on the sub-slice grid."""
    from reproseg.sources.synthetic.phantom import _liver_coords

    an = p.base
    seg = np.zeros(fr.shape, dtype=np.uint8)
    lo, hi = _LIVER_BOX
    lo = np.array([lo[0] * max(p.left_lobe, 1.0) - 25, lo[1] - 25, lo[2] - 70])
    hi = np.array([hi[0] + 25, hi[1] + 25, hi[2] * max(p.dome, 1.0) + 70])
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    anat = (np.asarray(an.liver_rot) @ (corners * np.asarray(an.liver_scale)).T).T
    anat += np.asarray(an.liver_center)
    box = fr.box(anat.min(0), anat.max(0))
    if box is None:
        return seg
    bx, by, bz = fr.coords(box)
    u = _liver_local(p, _liver_coords(an, bx, by, bz))
    f = _liver_fields(np.stack(np.broadcast_arrays(*u)), an)
    liver, segment = f["liver"], f["segment"]
    if p.riedel:  # tongue of the right lobe reaching down (segment VI)
        riedel = _ell(u[0], u[1], u[2], (78.0, -5.0, -80.0), (26.0, 30.0, 50.0)) <= 1.0
        liver = liver | riedel
        segment = np.where(riedel & ~f["liver"], np.uint8(6), segment)
    sub = cls[box]
    cavity = np.isin(sub, (T["visceral_fat"], T["lung"]) + _ORGANS_UNDER_LIVER)
    dia = np.broadcast_to(diaphragm, cls.shape)[box]
    ivc = ((bx - an.ivc_xy[0]) ** 2 + (by - an.ivc_xy[1]) ** 2 <= 11.0**2) & np.ones_like(bz, bool)
    liver = liver & cavity & (bz < dia - 5.0) & ~ivc & ~f["gallbladder"]
    sub[f["gallbladder"] & cavity & ~liver] = T["gallbladder"]
    sub[f["trunk"] & cavity] = T["portal_vein"]
    sub[liver] = T["liver"]
    lesion = np.zeros_like(liver)
    g = scan.lesion_growth
    for lx, ly, lz, lr in an.lesions:
        lesion |= _ell(u[0], u[1], u[2], (lx, ly, lz), (lr * g, lr * 0.9 * g, lr * 1.1 * g)) <= 1.0
    sub[lesion & liver] = T["lesion"]
    sub[f["vessel"] & liver] = T["liver_vessel"]
    seg[box] = np.where(liver, segment, 0)
    return seg


#: Organs the liver may push aside (it is painted over them).
_ORGANS_UNDER_LIVER = tuple(
    T[n]
    for n in (
        "kidney_cortex_r",
        "kidney_medulla_r",
        "stomach_wall",
        "stomach_content",
        "colon_wall",
        "colon_content",
        "colon_gas",
        "bowel_wall",
        "bowel_content",
        "pancreas",
    )
)


def _paint_vessels_bones(
    p: Patient, fr: _Frame, cls: np.ndarray, depth: np.ndarray, diaphragm: np.ndarray
) -> None:
    """Aorta, IVC, spine (cortex, marrow, discs, canal, posterior elements) and ribs with
    costal cartilage; drawn last, they cut through everything."""
    an = p.base
    s = an.spine_y
    x, y, z = fr.tx, fr.ty, fr.tz
    body = (T["air"], T["fat"], T["muscle"])
    inside = np.isin(cls, body, invert=True)
    ax = an.aorta_xy[0] + 4.0 * np.sin(z / 70.0)
    aorta = ((x - ax) ** 2 + (y - an.aorta_xy[1]) ** 2 <= 11.5**2) & inside
    cls[aorta] = T["aorta"]
    ivc = ((x - an.ivc_xy[0]) ** 2 + (y - an.ivc_xy[1]) ** 2 <= 11.0**2) & (z < diaphragm + 20)
    cls[ivc & inside] = T["ivc"]
    box = fr.box([-40, s - 70, -1e5], [40, s + 25, 1e5])
    if box is not None:
        bx, by, bz = fr.coords(box)
        sub = cls[box]
        vb = np.sqrt(bx**2 + (by - s) ** 2)
        disc = np.cos(2 * math.pi * bz / 30.0 + p.disc_phase) > 0.85
        post = (_ell(bx, by, bz, (0.0, s - 38.0, 0.0), (6.0, 22.0, 1e9)) <= 1) | (
            _ell(bx, by, bz, (0.0, s - 21.0, 0.0), (16.0, 6.0, 1e9)) <= 1
        )
        canal = _ell(bx, by, bz, (0.0, s - 26.0, 0.0), (8.0, 7.0, 1e9)) <= 1
        sub[post & ~disc & (vb > 18.0)] = T["bone_cortex"]
        sub[canal & (vb > 18.0)] = T["spinal_canal"]
        sub[(vb <= 18.0) & (vb > 15.5) & ~disc] = T["bone_cortex"]
        sub[(vb <= 15.5) & ~disc] = T["bone_marrow"]
        sub[(vb <= 18.0) & disc] = T["disc"]
    _paint_ribs(p, fr, cls, depth)
    _paint_pelvis(p, fr, cls)


def _paint_pelvis(p: Patient, fr: _Frame, cls: np.ndarray) -> None:
    """Iliac wings (cortical shells with marrow) and the sacrum, low in the abdomen."""
    an = p.base
    lz = float(an.liver_center[2])
    s = an.spine_y
    soft = tuple(T[n] for n in TISSUES if n not in ("air", "fat", "table"))
    for side in (-1.0, 1.0):
        c, r = (side * 95.0, s + 20.0, lz - 270.0), (22.0, 60.0, 70.0)
        _paint_ellipsoid(fr, cls, c, r, T["bone_cortex"], soft)
        inner = (r[0] - 3.0, r[1] - 3.0, r[2] - 3.0)
        _paint_ellipsoid(fr, cls, c, inner, T["bone_marrow"], (T["bone_cortex"],))
    c, r = (0.0, s - 5.0, lz - 280.0), (48.0, 24.0, 55.0)
    _paint_ellipsoid(fr, cls, c, r, T["bone_cortex"], soft)
    _paint_ellipsoid(fr, cls, c, (45.0, 21.0, 52.0), T["bone_marrow"], (T["bone_cortex"],))
    for side in (-1.0, 1.0):  # femoral heads
        c = (side * 90.0, s + 45.0, lz - 370.0)
        _paint_ellipsoid(fr, cls, c, (24.0, 24.0, 24.0), T["bone_cortex"], soft)
        _paint_ellipsoid(fr, cls, c, (21.0, 21.0, 21.0), T["bone_marrow"], (T["bone_cortex"],))
    # Urinary bladder: fluid, in front of the rectum, its size drawn per patient.
    f = p.bladder_fill
    c, r = (0.0, s + 75.0, lz - 335.0 + 20.0 * f), (45.0 * f, 35.0 * f, 35.0 * f)
    _paint_ellipsoid(
        fr, cls, c, r, T["bladder"], (T["visceral_fat"], T["bowel_wall"], T["bowel_content"])
    )


def _paint_ribs(p: Patient, fr: _Frame, cls: np.ndarray, depth: np.ndarray) -> None:
    """Twelve ribs per side in the chest wall, sloping down anteriorly, the lower ones
    shorter (floating ribs), the anterior ends costal cartilage."""
    an = p.base
    lc_z = float(an.liver_center[2])
    z12 = lc_z - p.rib12_z
    mid = an.fat + 0.5 * an.muscle + 3.0
    band = np.nonzero((np.abs(depth - np.float32(mid)) < 4.0) & (fr.tz > z12 - 110.0))
    if band[0].size == 0:
        return
    x, y = fr.tx[band[0], band[1], 0], fr.ty[band[0], band[1], 0]
    z = fr.tz[0, 0, band[2]]
    phi = np.arctan2(np.abs(x), -(y - an.spine_y)) / math.pi  # 0 posterior, 1 anterior
    rib = np.zeros(x.shape, dtype=bool)
    cart = np.zeros(x.shape, dtype=bool)
    for k in range(12):
        zk = z12 + (11 - k) * p.rib_gap
        reach = 0.92 if k < 7 else (0.85 if k < 10 else 0.5)
        along = np.abs(z - (zk - 75.0 * phi**1.4)) < 5.0
        hit = along & (phi > 0.1) & (phi < reach)
        rib |= hit & (phi < 0.72)
        cart |= hit & (phi >= 0.72)
    cls[band[0][rib], band[1][rib], band[2][rib]] = T["rib"]
    cls[band[0][cart], band[1][cart], band[2][cart]] = T["cartilage"]


# --------------------------------------------------------------------------------------------
# Image formation
# --------------------------------------------------------------------------------------------


class _Texture:
    """Unit-variance smooth random field over the whole sub-slice grid: Gaussian noise on a
    coarse grid (one node per ``corr_mm``), upsampled in-plane once and linearly along z
    per slab, so any slab of it is cheap and slabs join seamlessly."""

    def __init__(self, rng: np.random.Generator, fr: _Frame, corr_mm: float) -> None:
        step = fr.step / fr.scale
        coarse = [
            max(2, math.ceil(n * s / corr_mm) + 1) for n, s in zip(fr.shape, step, strict=True)
        ]
        g = rng.standard_normal(coarse, dtype=np.float32)
        zoom = (fr.shape[0] / coarse[0], fr.shape[1] / coarse[1], 1.0)
        xy = ndimage.zoom(g, zoom, order=1, mode="nearest", grid_mode=True)
        self.xy = xy[: fr.shape[0], : fr.shape[1]] / np.float32(0.6)
        self.scale_z = coarse[2] / fr.shape[2]

    def slab(self, z0: int, z1: int) -> np.ndarray:
        pos = np.clip((np.arange(z0, z1) + 0.5) * self.scale_z - 0.5, 0, self.xy.shape[2] - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, self.xy.shape[2] - 1)
        w = (pos - i0).astype(np.float32)
        return self.xy[:, :, i0] * (1 - w) + self.xy[:, :, i1] * w


#: Texture amplitude (HU per unit of the smooth field) of each tissue.
_TEXTURE = {
    "liver": 5.0,
    "spleen": 7.0,
    "muscle": 4.0,
    "fat": 5.0,
    "visceral_fat": 12.0,
    "kidney_cortex_r": 6.0,
    "kidney_cortex_l": 6.0,
    "pancreas": 10.0,
    "bowel_content": 10.0,
    "colon_content": 70.0,
    "stomach_content": 10.0,
    "lung": 30.0,
    "bone_marrow": 40.0,
}


def _nps_filter(shape_xy: tuple[int, int], spacing_xy: float, grain_mm: float) -> np.ndarray:
    """Amplitude filter (rfft layout) of the ramp-times-Gaussian noise power spectrum of
    filtered back projection, NPS(f) ~ f exp(-(f/fc)^2), peaking at 1/``grain_mm``;
    normalised so filtered unit white noise keeps unit variance."""
    fx = np.fft.fftfreq(shape_xy[0], d=spacing_xy)[:, None]
    fy = np.fft.fftfreq(shape_xy[1], d=spacing_xy)[None, :]
    fc = math.sqrt(2.0) / grain_mm
    full = np.hypot(fx, fy)
    nps = full * np.exp(-((full / fc) ** 2))
    norm = math.sqrt(float(nps.mean())) or 1.0
    f = np.hypot(fx, np.fft.rfftfreq(shape_xy[1], d=spacing_xy)[None, :])
    return (np.sqrt(f * np.exp(-((f / fc) ** 2))) / norm).astype(np.float32)


def ct_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing_xy: float, grain_mm: float
) -> np.ndarray:
    """Unit-variance CT-like noise: white noise shaped slice by slice by the noise power
    spectrum of :func:`_nps_filter` (correlated, not white)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = fft.rfft2(white, axes=(0, 1), workers=1)
    spec *= _nps_filter(shape[:2], spacing_xy, grain_mm)[:, :, None]
    return fft.irfft2(spec, s=shape[:2], axes=(0, 1), workers=1).astype(np.float32)


def _streaks(
    rng: np.random.Generator, p: Patient, scan: RScan, fr: _Frame, affine: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Streak artefacts as (2D map in HU, envelope over the output slices) pairs: thin
    bright/dark lines through the spine at random angles, each over a random range of
    slices, scaled so the peak |sum| is ``scan.streak`` at most."""
    if scan.streak <= 0:
        return []
    n = scan.n_slices
    tx, ty = fr.tx[:, :, 0], fr.ty[:, :, 0]
    an = p.base
    pw = an.body_p
    body = ((np.abs(tx / an.body_a) ** pw + np.abs(ty / an.body_b) ** pw) < 1).astype(np.float32)
    zc = (affine[2, 3] + scan.spacing[2] * np.arange(n)).astype(np.float32)
    out = []
    for _ in range(int(rng.integers(3, 9))):
        theta = float(rng.uniform(0, math.pi))
        px = float(rng.uniform(-20, 20))
        py = an.spine_y + float(rng.uniform(-20, 20))
        d = (tx - px) * math.sin(theta) - (ty - py) * math.cos(theta)
        width = float(rng.uniform(1.0, 2.5)) * scan.spacing[0] / p.scale
        amp = float(rng.uniform(0.4, 1.0) * rng.choice([-1, 1]))
        line = (np.exp(-((d / width) ** 2)) * np.float32(amp) * body).astype(np.float32)
        centre, length = float(rng.uniform(zc.min(), zc.max())), float(rng.uniform(8, 60))
        out.append((line, np.exp(-(((zc - centre) / length) ** 2)).astype(np.float32)))
    # bound: sum of |line| maxima weighted by the envelopes, over slices
    peak = max(float(sum(np.abs(m).max() * e[j] for m, e in out)) for j in range(n))
    factor = np.float32(scan.streak / max(peak, 1.0) if peak > 1.0 else scan.streak)
    return [(m * factor, e) for m, e in out]


def _beam_hardening(p: Patient, scan: RScan, fr: _Frame, rad: np.ndarray) -> np.ndarray:
    """Cupping (central darkening) plus dark bands between the spine and the lateral chest
    wall, in HU; the darkest value is ``-scan.beam_hardening``."""
    if scan.beam_hardening <= 0:
        return np.zeros(rad.shape, dtype=np.float32)
    cup = np.clip(1.0 - rad**2, 0, 1)
    tx, ty = fr.tx[:, :, 0], fr.ty[:, :, 0]
    an = p.base
    band = np.zeros(tx.shape, dtype=np.float32)
    for side in (-1.0, 1.0):  # spine centre -> lateral chest wall
        dx, dy = side * (an.body_a - an.fat - 15.0), 25.0
        t = np.clip((tx * dx + (ty - an.spine_y) * dy) / (dx * dx + dy * dy), 0, 1)
        dist2 = (tx - t * dx) ** 2 + (ty - an.spine_y - t * dy) ** 2
        band = np.maximum(band, np.exp(-dist2 / 60.0))
    val = np.maximum(cup, 0.7 * band[:, :, None] * (rad < 1))
    return (-scan.beam_hardening * val).astype(np.float32)


@dataclass
class _ScanDraws:
    """Random draws of a scan's rendering made up front, in a fixed order, so that rendering
    slab by slab gives the same bytes whatever the slab size."""

    bowel: tuple
    texture: _Texture
    streaks: list[tuple[np.ndarray, np.ndarray]]
    lut: np.ndarray
    amp: np.ndarray
    nps: np.ndarray


def _draws(
    rng: np.random.Generator, p: Patient, scan: RScan, fr: _Frame, affine: np.ndarray
) -> _ScanDraws:
    lut = np.asarray(scan.hu, dtype=np.float32)
    if p.oral_contrast:
        lut[T["bowel_content"]] = 150.0 + 150.0 * float(rng.random())
    amp = np.zeros(len(TISSUES), dtype=np.float32)
    for name, a in _TEXTURE.items():
        amp[T[name]] = a
    if scan.phase == "arterial":
        amp[T["spleen"]] = 25.0  # heterogeneous arterial spleen
    return _ScanDraws(
        bowel=_bowel_waves(rng),
        texture=_Texture(rng, fr, 6.0),
        streaks=_streaks(rng, p, scan, fr, affine),
        lut=lut,
        amp=amp,
        nps=_nps_filter(fr.shape[:2], scan.spacing[0], scan.noise_grain),
    )


def _image(
    p: Patient,
    scan: RScan,
    fr: _Frame,
    j0: int,
    cls: np.ndarray,
    depth: np.ndarray,
    draws: _ScanDraws,
    rng: np.random.Generator,
) -> np.ndarray:
    """Class map of a slab (output slices from ``j0``) -> int16 HU: per-tissue HU and
    texture, averaging over the slice thickness, in-plane blur, beam hardening, streaks
    and noise."""
    k = scan.sub_slices
    z0 = j0 * k
    tex = draws.texture.slab(z0, z0 + cls.shape[2])
    img = draws.lut[cls]
    img += draws.amp[cls] * tex
    img[(cls == T["lung"]) & (tex > 1.6)] += 550.0  # lung vessels
    del tex
    nx, ny, n = cls.shape[0], cls.shape[1], cls.shape[2] // k
    if k > 1:  # partial volume over the slice thickness
        img = img.reshape(nx, ny, n, k).mean(axis=3, dtype=np.float32)
    sig = scan.psf / scan.spacing[0]
    for axis in (0, 1):
        img = ndimage.gaussian_filter1d(img, sig, axis=axis, mode="nearest", truncate=3.0)
    centre = slice((k - 1) // 2, None, k)
    rad = 1.0 - depth[:, :, centre] / np.float32(0.5 * (p.base.body_a + p.base.body_b))
    img += _beam_hardening(p, scan, fr, rad)
    for line, env in draws.streaks:
        img += line[:, :, None] * env[None, None, j0 : j0 + n]
    if scan.noise_sd > 0:
        white = rng.standard_normal(img.shape, dtype=np.float32)
        spec = fft.rfft2(white, axes=(0, 1), workers=1)
        spec *= draws.nps[:, :, None]
        noise = fft.irfft2(spec, s=img.shape[:2], axes=(0, 1), workers=1).astype(np.float32)
        sd = np.where(rad < 1, 0.75 + 0.25 * np.clip(1 - rad**2, 0, 1), 0.6).astype(np.float32)
        img += noise * (sd * np.float32(scan.noise_sd))
    return np.clip(np.rint(img), HU_MIN, HU_MAX).astype(np.int16)


# --------------------------------------------------------------------------------------------
# One scan
# --------------------------------------------------------------------------------------------

#: Sub-slices rendered at once (a slab holds SLAB // sub_slices output slices): bounds the
#: memory (measured 1-2 GB at 512x512). Fixed, because the noise is drawn slab by slab: another
#: value would change the noise bytes (not the anatomy or the label).
SLAB = 24


def _label(plan: LabelPlan, c_cls: np.ndarray, c_seg: np.ndarray) -> np.ndarray:
    """Label of the output slices from the class and segment maps at slice centres."""
    is_liver = np.isin(c_cls, [T[t] for t in _LIVER_TISSUES]) & (c_seg > 0)
    if plan.couinaud:
        label = np.where(is_liver, c_seg, 0).astype(np.uint8)
    else:
        label = np.where(is_liver, plan.liver_value, 0).astype(np.uint8)
    for value, name in plan.organs:
        label[np.isin(c_cls, [T[t] for t in ORGAN_TISSUES[name]])] = value
    return label


def render_randomised(
    patient: Patient,
    scan: RScan,
    shape_xy: tuple[int, int],
    plan: LabelPlan,
    rng: np.random.Generator,
) -> SyntheticVolume:
    """Render one randomised scan slab by slab: class map on the sub-slice grid, label at
    slice centres, image averaged over each slice. ``rng`` drives only textures, bowel
    loops, streaks and noise, so the label never depends on the noise."""
    full, affine = _frame(patient, scan, shape_xy)
    diaphragm = _diaphragm(patient, full)
    draws = _draws(rng, patient, scan, full, affine)
    n, k = scan.n_slices, scan.sub_slices
    image = np.empty((*full.shape[:2], n), dtype=np.int16)
    label = np.zeros((*full.shape[:2], n), dtype=np.uint8)
    liver = np.zeros((*full.shape[:2], n), dtype=bool)
    lesion, lung_top = 0, False
    centre = slice((k - 1) // 2, None, k)
    per_slab = max(1, SLAB // k)
    for j0 in range(0, n, per_slab):
        j1 = min(n, j0 + per_slab)
        fr = full.slab(j0 * k, j1 * k)
        cls, depth = _paint_body(patient, fr)
        _paint_thorax(patient, fr, cls, diaphragm)
        _paint_organs(patient, fr, cls)
        _paint_bowel(patient, fr, cls, draws.bowel)
        seg = _paint_liver(patient, scan, fr, cls, diaphragm)
        _paint_vessels_bones(patient, fr, cls, depth, diaphragm)
        c_cls, c_seg = cls[:, :, centre], seg[:, :, centre]
        label[:, :, j0:j1] = _label(plan, c_cls, c_seg)
        liver[:, :, j0:j1] = np.isin(c_cls, [T[t] for t in _LIVER_TISSUES]) & (c_seg > 0)
        lesion += int((c_cls == T["lesion"]).sum())
        lung_top = bool((c_cls[:, :, -1] == T["lung"]).any())
        image[:, :, j0:j1] = _image(patient, scan, fr, j0, cls, depth, draws, rng)
    voxel_ml = float(np.prod(scan.spacing)) / 1000.0
    meta = {
        "scanner": "randomised",
        "phase": scan.phase,
        "has_lesion": bool(lesion > 0),
        "n_lesions": len(patient.base.lesions) if lesion > 0 else 0,
        "liver_volume_ml": round(float(liver.sum()) * voxel_ml, 1),
        "slice_thickness_mm": scan.spacing[2],
        "dome_cut": bool(liver[:, :, -1].any()),
        "chest_in_view": lung_top,
    }
    return SyntheticVolume(image=image, label=label, affine=affine, metadata=meta)


def generate_randomised(
    cfg: RandomisedSynthetic,
    shape: tuple[int, int, int],
    plan: LabelPlan,
    rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator],
    lesion_probability: float = 0.3,
    lesion_growth: float = 1.0,
) -> SyntheticVolume:
    """Draw a patient and a scan from ``rngs`` = (anatomy, scan, texture+noise) streams and
    render it; ``shape`` = (x, y, most slices)."""
    patient = sample_patient(rngs[0], cfg, lesion_probability)
    scan = sample_rscan(rngs[1], cfg, shape)
    scan = dataclasses.replace(scan, lesion_growth=lesion_growth)
    return render_randomised(patient, scan, (shape[0], shape[1]), plan, rngs[2])
