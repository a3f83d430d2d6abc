"""The embedded synthetic CT liver dataset: portal-venous abdominal CT with 8 Couinaud segments.

Why a simulator: the default pipeline must run anywhere, offline, in minutes, on data whose
ground truth is known exactly and whose every byte is reproducible from a seed. The volumes
are meant to be *learnable in the same way as real CT*: the segment boundaries are not drawn
at random but follow simulated vessels, as in the Couinaud scheme used by radiologists:

* three hepatic veins (right, middle, left) run as contrast-enhanced tubes inside vertical,
  slightly curved surfaces that meet at the inferior vena cava (IVC); these surfaces split
  the liver into the right posterior (VI, VII), right anterior (V, VIII), medial left (IV)
  and lateral left (II, III) sectors;
* the portal vein bifurcation lies in a near-horizontal surface that splits every sector into
  a superior (II, VII, VIII, IVa) and an inferior (III, V, VI, IVb) part;
* segment I (caudate) is the region around the IVC, posterior to the portal bifurcation.

All of it lives in a liver-local coordinate frame that is scaled, rotated, translated and
smoothly deformed per subject, so a given label always sits at the same *relative* place.

Around the liver: air (-1000 HU) outside a superelliptic body outline, subcutaneous fat,
abdominal-wall muscle, mesenteric fat and bowel, spine, aorta, IVC, kidneys, spleen, stomach,
gallbladder, lung bases and heart above the diaphragm. Nuisances: per-subject field of view
(hence spacing, different in-plane and across slices), three simulated scanners (noise level,
reconstruction kernel, calibration offset), correlated Gaussian noise, a smooth multiplicative
and additive bias (cupping), partial-volume blur, hypodense lesions that keep their segment
label, follow-up scans of the same patient (same anatomy, new pose, scanner and noise) and
several annotators whose labels differ from the truth by a smooth boundary displacement.

Determinism: every random number of a case comes from ``numpy.random.default_rng`` seeded with
``(seed, subject, scan, purpose)``, so a case never depends on the others and the same seed
gives byte-identical files (``reproseg.io.save_nifti`` gzips with ``mtime=0``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: Output intensity range of the int16 images (the usual CT reconstruction range).
HU_MIN, HU_MAX = -1024, 3071

#: Simulated scanners: noise multiplier, reconstruction kernel (PSF sigma in voxels,
#: in-plane / across slices), calibration offset (HU), field-of-view margin around the body
#: and craniocaudal coverage (mm). Different scanners give different noise and spacing.
SCANNERS: dict[str, dict[str, Any]] = {
    "sim_ct_a": {
        "noise": 1.0,
        "psf_xy": 0.45,
        "psf_z": 0.45,
        "offset": 0.0,
        "fov_margin": (1.04, 1.12),
        "z_cover": (200.0, 235.0),
    },
    "sim_ct_b": {
        "noise": 1.4,
        "psf_xy": 0.65,
        "psf_z": 0.55,
        "offset": 6.0,
        "fov_margin": (1.10, 1.22),
        "z_cover": (215.0, 250.0),
    },
    "sim_ct_c": {
        "noise": 0.8,
        "psf_xy": 0.35,
        "psf_z": 0.6,
        "offset": -4.0,
        "fov_margin": (1.02, 1.08),
        "z_cover": (195.0, 225.0),
    },
}


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """Everything that is fixed for a patient (shared by all scans of the subject).

    Lengths are in mm; the world frame is RAS (x to the patient's right, y anterior,
    z superior) centred on the body axis. ``liver_rot`` maps liver-local to world axes.
    """

    body_a: float  # left-right semi-axis of the body outline
    body_b: float  # anterior semi-axis (posterior one is 0.95 of it)
    body_p: float  # superellipse exponent of the outline (2 = ellipse)
    fat: float  # subcutaneous fat thickness
    muscle: float  # abdominal wall muscle thickness
    spine_y: float  # vertebral body centre (y)
    ivc_xy: tuple[float, float]
    aorta_xy: tuple[float, float]
    liver_center: tuple[float, float, float]
    liver_rot: tuple[tuple[float, ...], ...]
    liver_scale: tuple[float, float, float]
    deform: tuple[tuple[float, ...], ...]  # rows: (wx, wy, wz, phase, ax, ay, az)
    vein_angles: tuple[float, float, float]  # right, middle, left hepatic vein azimuths (rad)
    vein_slopes: tuple[float, float, float]
    vein_bends: tuple[float, float, float]
    vein_radius: float
    portal_z: float
    portal_tilt: tuple[float, float]
    dome_z: float
    gallbladder: bool
    lesions: tuple[tuple[float, float, float, float], ...]  # liver-local centre + radius
    bowel_waves: tuple[tuple[float, float, float, float], ...]  # (kx, ky, kz, phase)


@dataclass(frozen=True)
class Scan:
    """What changes between scans of one patient: pose, scanner, contrast timing, noise."""

    scanner: str
    spacing: tuple[float, float, float]
    shift: tuple[float, float, float]  # patient translation on the table (mm)
    yaw: float  # patient rotation about z (rad)
    liver_hu: float
    vessel_hu: float
    fat_hu: float
    muscle_hu: float
    noise_sd: float
    bias: tuple[float, ...]  # multiplicative bias polynomial coefficients
    cupping: float  # additive central darkening (HU)
    lesion_growth: float  # lesion size relative to the first scan


@dataclass
class SyntheticVolume:
    """One rendered scan: int16 HU image, uint8 truth label (0-8), RAS affine, facts."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.diag(self.affine)[:3])  # type: ignore[return-value]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix R = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    cz, sz, cy, sy, cx, sx = (
        math.cos(yaw),
        math.sin(yaw),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(roll),
        math.sin(roll),
    )
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


# Liver template (liver-local mm, before per-subject scaling): the IVC axis is the origin of
# the hepatic veins; sizes are those of an adult liver.
_IVC_LOCAL = np.array([0.0, -50.0])
_CONFLUENCE_Z = 40.0
_CAUDATE = (np.array([-16.0, -30.0, -8.0]), np.array([21.0, 17.0, 32.0]))
_PORTAL_BIFURCATION = np.array([8.0, -16.0])
_GALLBLADDER = (np.array([18.0, 38.0, -58.0]), np.array([14.0, 16.0, 28.0]))
_LIVER_BOX = (np.array([-125.0, -120.0, -92.0]), np.array([112.0, 66.0, 72.0]))


def _template_shape(ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
    """Implicit liver template (<= 1 inside), liver-local mm: a superquadric whose
    antero-posterior and craniocaudal extents shrink from the thick right lobe to the thin,
    anterior left lobe; the right lobe also reaches further back laterally."""
    t = 1.0 / (1.0 + np.exp(-(ux + 30.0) / 18.0))
    yc = 18.0 + (-20.0 - 18.0) * t - 0.3 * np.maximum(ux - 20.0, 0.0)
    yh = 38.0 + (74.0 - 38.0) * t
    zc, zh = 14.0 + (-10.0 - 14.0) * t, 34.0 + (80.0 - 34.0) * t
    p = 2.6
    return (
        np.abs((ux + 6.0) / 116.0) ** p + np.abs((uy - yc) / yh) ** p + np.abs((uz - zc) / zh) ** p
    )


def _template_points(step: float = 6.0) -> np.ndarray:
    """Points (N, 3) inside the liver template, for placing the liver in the body."""
    lo, hi = _LIVER_BOX
    grid = np.mgrid[lo[0] : hi[0] : step, lo[1] : hi[1] : step, lo[2] : hi[2] : step].reshape(3, -1)
    return grid[:, _template_shape(*grid) <= 1.0].T


def sample_anatomy(rng: np.random.Generator, lesion_probability: float = 0.3) -> Anatomy:
    """Draw a patient: body habitus, liver pose/size/deformation, vessels, lesions."""
    scale = tuple(float(v) for v in rng.uniform(0.8, 1.0) * rng.uniform(0.94, 1.06, 3))
    rot = _rotation(*np.deg2rad(rng.uniform([-12, -7, -7], [12, 7, 7])))
    fat, muscle = float(rng.uniform(8, 28)), float(rng.uniform(7, 11))
    wall, gap = fat + muscle, float(rng.uniform(4, 12))
    # Extents of the posed template (coarse point cloud of the undeformed shape, mm).
    pts = _template_points() * scale @ rot.T
    lr, ap = np.ptp(pts[:, 0]), np.ptp(pts[:, 1])
    # The body encloses the liver; the liver touches the right and posterior abdominal wall
    # (bare area), as in real CT, and the IVC and spine follow from its pose.
    body_a = max(float(rng.uniform(150, 175)), (lr + 2 * wall + gap) / 1.9)
    body_b = max(float(rng.uniform(118, 138)), (ap + 2 * wall + gap) / 1.9)
    right_wall = body_a - wall - gap - 0.1 * body_a  # superellipse corners are rounded
    back_wall = -0.95 * body_b + wall + gap + 0.08 * body_b
    center = (
        float(right_wall - pts[:, 0].max()),
        float(back_wall - pts[:, 1].min()),
        float(rng.uniform(-2, 12)),
    )
    ivc = np.asarray(center[:2]) + (rot @ (np.array([*_IVC_LOCAL, 0.0]) * scale))[:2]
    spine_y = max(float(ivc[1]) - float(rng.uniform(24, 30)), -0.95 * body_b + fat + 48.0)
    deform = []
    for _ in range(4):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(110, 240)
        amp = rng.normal(size=3) * rng.uniform(2.5, 6.0)
        deform.append((*(direction * 2 * math.pi / wavelength), rng.uniform(0, 2 * math.pi), *amp))
    base = np.deg2rad([15.0, 92.0, 125.0])  # right, middle, left vein azimuths from +x
    angles = base + np.deg2rad(rng.uniform(-7, 7, 3))
    bowel = tuple(
        (
            *(float(v) for v in rng.normal(size=3) / rng.uniform(9, 16)),
            float(rng.uniform(0, 2 * math.pi)),
        )
        for _ in range(6)
    )
    more: dict[str, Any] = {
        "body_p": float(rng.uniform(2.2, 2.8)),
        "aorta_xy": (float(rng.uniform(-24, -14)), float(spine_y + rng.uniform(24, 30))),
        "vein_slopes": tuple(float(v) for v in rng.uniform(0.35, 0.75, 3)),
        "vein_bends": tuple(float(v) for v in rng.uniform(-0.004, 0.004, 3)),
        "vein_radius": float(rng.uniform(5.0, 7.0)),
        "portal_z": float(rng.uniform(-14, -2)),
        "portal_tilt": (float(rng.uniform(-0.16, -0.08)), float(rng.uniform(-0.06, 0.06))),
        "dome_z": float(72 * scale[2] - rng.uniform(2, 10)),
        "gallbladder": bool(rng.random() < 0.85),
    }
    # Lesions are drawn last, so the lesion setting never changes the rest of the anatomy.
    lesions: list[tuple[float, float, float, float]] = []
    if rng.random() < lesion_probability:
        for _ in range(int(rng.integers(1, 4))):
            # Deep inside the right lobe or segment IV, where a lesion cannot leave the liver.
            if rng.random() < 0.7:
                c = rng.uniform([15, -50, -50], [75, 35, 35])
            else:
                c = rng.uniform([-55, -5, -15], [-10, 35, 25])
            lesions.append((*(float(v) for v in c), float(rng.uniform(6, 15))))
    return Anatomy(
        body_a=body_a,
        body_b=body_b,
        fat=fat,
        muscle=muscle,
        spine_y=spine_y,
        ivc_xy=(float(ivc[0]), float(ivc[1])),
        liver_center=center,
        liver_rot=tuple(tuple(float(v) for v in r) for r in rot),
        liver_scale=scale,
        deform=tuple(tuple(float(v) for v in d) for d in deform),
        vein_angles=tuple(float(a) for a in angles),  # type: ignore[arg-type]
        lesions=tuple(lesions),
        bowel_waves=bowel,
        **more,
    )


def sample_scan(
    rng: np.random.Generator,
    anatomy: Anatomy,
    shape: tuple[int, int, int],
    noise_hu: float,
    spacing: tuple[float, float, float] | None = None,
) -> Scan:
    """Draw a scan of ``anatomy``: scanner, field of view (spacing), pose, contrast, noise.

    Without an explicit ``spacing``, the in-plane field of view encloses the body with the
    scanner's margin (square pixels, as in CT) and the craniocaudal coverage is drawn from
    the scanner's range; spacing = field of view / grid, so it varies per subject and differs
    between in-plane and slice direction.
    """
    name = list(SCANNERS)[int(rng.integers(len(SCANNERS)))]
    sc = SCANNERS[name]
    if spacing is None:
        fov_xy = 2 * max(anatomy.body_a, anatomy.body_b) * rng.uniform(*sc["fov_margin"])
        s_xy = fov_xy / max(shape[0], shape[1])
        s_z = rng.uniform(*sc["z_cover"]) / shape[2]
        spacing = (round(float(s_xy), 4), round(float(s_xy), 4), round(float(s_z), 4))
    liver_hu = rng.uniform(50, 70)
    return Scan(
        scanner=name,
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        shift=tuple(float(v) for v in rng.uniform([-8, -8, -10], [8, 8, 10])),  # type: ignore[arg-type]
        yaw=float(np.deg2rad(rng.uniform(-4, 4))),
        liver_hu=float(liver_hu + sc["offset"]),
        vessel_hu=float(rng.uniform(150, 195) + sc["offset"]),
        fat_hu=float(rng.uniform(-110, -90) + sc["offset"]),
        muscle_hu=float(rng.uniform(38, 52) + sc["offset"]),
        noise_sd=float(noise_hu * sc["noise"]),
        bias=tuple(float(v) for v in rng.uniform(-0.02, 0.02, 4)),
        cupping=float(rng.uniform(0, 12)),
        lesion_growth=1.0,
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine with diagonal spacing and the volume centre at the world origin."""
    aff = np.eye(4)
    aff[:3, :3] = np.diag(spacing)
    aff[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing, strict=True)]
    return aff


def _ellipsoid(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    c: tuple[float, float, float],
    r: tuple[float, float, float],
) -> np.ndarray:
    """Boolean ellipsoid mask (axis-aligned) on broadcastable coordinate arrays."""
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def _liver_fields(u: np.ndarray, an: Anatomy) -> dict[str, np.ndarray]:
    """Liver shape, segment surfaces and intrahepatic vessels in liver-local coordinates.

    ``u`` has shape (3, ...) in deformed template mm. Returns boolean masks ``liver``,
    ``vessel`` (intrahepatic hepatic and portal veins), ``trunk`` (main portal vein),
    ``gallbladder`` and the uint8 ``segment`` map (1-8, meaningful inside the liver). Each
    hepatic vein is a tube centred on the zero set of its segment surface ``f``, so every
    boundary between sectors has a bright vessel on it, as in real CT.
    """
    ux, uy, uz = u
    shape_f = _template_shape(ux, uy, uz)
    liver = shape_f <= 1.0

    ivc_x, ivc_y = _IVC_LOCAL.tolist()  # Python floats: keep float32 (NEP 50)
    rel_x, rel_y = ux - ivc_x, uy - ivc_y
    dz = uz - _CONFLUENCE_Z
    surfaces, vessel = [], np.zeros(ux.shape, dtype=bool)
    for angle, slope, bend in zip(an.vein_angles, an.vein_slopes, an.vein_bends, strict=True):
        d = (math.cos(angle), math.sin(angle))  # horizontal direction of the vein
        n = (math.sin(angle), -math.cos(angle))  # normal of its vertical surface
        s = d[0] * rel_x + d[1] * rel_y  # distance along the vein from the IVC axis
        f = n[0] * rel_x + n[1] * rel_y + bend * s * s + 0.08 * dz  # curved, slightly tilted
        surfaces.append(f)
        g = (dz + slope * s) / math.sqrt(1 + slope * slope)  # height above the vein axis
        radius = an.vein_radius * (1.0 - 0.6 * np.clip(s / 95.0, 0, 1))
        vessel |= (f * f + g * g <= radius * radius) & (s >= 0) & (s <= 95.0)
    f_right, f_middle, f_left = surfaces
    # Normals: right vein's points posterior (anterior sector f < 0), middle vein's to the
    # patient's right (right liver f > 0), left vein's medially (segment IV f > 0).
    anterior = f_right < 0
    right_liver = f_middle > 0
    medial_left = f_left > 0

    tx, ty = an.portal_tilt
    h = uz - an.portal_z - tx * ux - ty * uy  # portal surface: > 0 superior
    bx, by = _PORTAL_BIFURCATION.tolist()
    q_right = uy - (by + 0.12 * (ux - bx))
    q_left = uy - (by - 0.6 * (ux - bx))
    r_pv = 6.0 - 3.0 * np.clip(np.abs(ux - bx) / 70.0, 0, 1)
    vessel |= (h * h + q_right * q_right <= r_pv**2) & (ux >= bx) & (ux <= bx + 70)
    vessel |= (h * h + q_left * q_left <= r_pv**2) & (ux <= bx) & (ux >= bx - 55)
    # Main portal trunk: from the bifurcation downwards, medially and anteriorly.
    axis = np.array([-0.25, 0.3, -0.92])
    ax_x, ax_y, ax_z = (axis / np.linalg.norm(axis)).tolist()
    rx, ry, rz = ux - bx, uy - by, uz - an.portal_z
    along = ax_x * rx + ax_y * ry + ax_z * rz
    perp2 = rx * rx + ry * ry + rz * rz - along * along
    trunk = (along >= 0) & (along <= 60) & (perp2 <= 7.0**2)

    superior = h > 0
    segment = np.where(
        right_liver,
        np.where(anterior, np.where(superior, 8, 5), np.where(superior, 7, 6)),
        np.where(medial_left, 4, np.where(superior, 2, 3)),
    ).astype(np.uint8)
    cc, cr = _CAUDATE
    caudate = _ellipsoid(ux, uy, uz, tuple(cc.tolist()), tuple(cr.tolist()))
    # Left of the middle-vein surface and behind the IVC axis lies the Spiegel lobe (also I).
    caudate |= ~right_liver & (rel_y < 8.0)
    segment[caudate] = 1
    gc, gr = _GALLBLADDER
    gallbladder = (
        _ellipsoid(ux, uy, uz, tuple(gc.tolist()), tuple(gr.tolist()))
        if an.gallbladder
        else np.zeros_like(liver)
    )
    return {
        "liver": liver,
        "vessel": vessel & (shape_f <= 1.02),
        "trunk": trunk,
        "gallbladder": gallbladder,
        "segment": segment,
    }


@dataclass
class _Frame:
    """The voxel grid of one scan in the patient's anatomical frame, and the body layout.

    ``ax2``/``ay2`` have shape (X, Y, 1) and ``az`` (1, 1, Z): every mask is built by
    broadcasting, so only the arrays that really are 3D cost a full volume.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    ax2: np.ndarray
    ay2: np.ndarray
    az: np.ndarray
    cos_yaw: float
    sin_yaw: float
    rad: np.ndarray | None = None  # normalised body radius, 1 at the skin
    depth: np.ndarray | None = None  # depth below the skin (mm)
    cavity: np.ndarray | None = None  # inside the abdominal/thoracic wall
    diaphragm: np.ndarray | None = None  # height of the diaphragm (mm), (X, Y, 1)
    abdomen: np.ndarray | None = None  # cavity below the diaphragm


def _frame(scan: Scan, shape: tuple[int, int, int]) -> _Frame:
    """Voxel-centre coordinates in the anatomical frame (world minus the pose on the table)."""
    sp = scan.spacing
    affine = _affine(shape, sp)
    axes = [affine[i, 3] + sp[i] * np.arange(shape[i], dtype=np.float32) for i in range(3)]
    cy, sy = math.cos(scan.yaw), math.sin(scan.yaw)
    wx = axes[0][:, None] - scan.shift[0]
    wy = axes[1][None, :] - scan.shift[1]
    ax2 = (cy * wx + sy * wy).astype(np.float32)[:, :, None]  # (X, Y, 1)
    ay2 = (-sy * wx + cy * wy).astype(np.float32)[:, :, None]
    az = (axes[2] - scan.shift[2]).astype(np.float32)[None, None, :]  # (1, 1, Z)
    return _Frame(shape, sp, affine, ax2, ay2, az, cy, sy)


def _render_body(an: Anatomy, scan: Scan, fr: _Frame) -> np.ndarray:
    """Air, the body wall (superelliptic outline, fat, muscle; slightly wider caudally) and
    the mesenteric fat and bowel loops of the cavity. Sets ``fr.rad/depth/cavity``."""
    ax2, ay2, az = fr.ax2, fr.ay2, fr.az
    grow = 1.0 - 0.0006 * az
    half_b = np.where(ay2 >= 0, an.body_b, 0.95 * an.body_b).astype(np.float32)
    a, b, pw = an.body_a * grow, half_b * grow, an.body_p
    fr.rad = (np.abs(ax2 / a) ** pw + np.abs(ay2 / b) ** pw) ** (1.0 / pw)  # 1 at the skin
    mean_r = 0.5 * (an.body_a + an.body_b)
    fr.depth = depth = (1.0 - fr.rad) * mean_r  # approximate depth below the skin (mm)
    img = np.full(fr.shape, -1000.0, dtype=np.float32)
    img[depth >= 0] = scan.fat_hu
    img[depth >= an.fat] = scan.muscle_hu
    fr.cavity = cavity = depth >= an.fat + an.muscle
    # Mesenteric fat and bowel loops: a smooth periodic pattern thresholded.
    bowel_field = np.zeros(fr.shape, dtype=np.float32)
    for kx, ky, kz, phase in an.bowel_waves:  # random directions: no lattice artefact
        bowel_field += np.sin(kx * ax2 + ky * ay2 + kz * az + phase)
    return np.where(cavity, np.where(bowel_field > -0.8, 30.0, scan.fat_hu + 10.0), img).astype(
        np.float32
    )


def _render_thorax(an: Anatomy, scan: Scan, fr: _Frame, img: np.ndarray) -> None:
    """Diaphragm domes, lung bases and heart (in place). Sets ``fr.diaphragm/abdomen``."""
    ax2, ay2, az = fr.ax2, fr.ay2, fr.az
    lc = [float(v) for v in an.liver_center]  # Python floats keep arrays float32 (NEP 50)
    dome_r = lc[2] + an.dome_z - ((ax2 - lc[0] - 15) ** 2 + (0.8 * (ay2 - lc[1])) ** 2) / 260.0
    dome_l = lc[2] + an.dome_z - 14.0 - ((ax2 + 65) ** 2 + (0.8 * (ay2 - lc[1])) ** 2) / 260.0
    fr.diaphragm = np.maximum(dome_r, dome_l)
    thorax = fr.cavity & (az > fr.diaphragm)
    img[thorax] = -860.0
    heart = thorax & _ellipsoid(
        ax2, ay2, az, (-30.0, an.spine_y + 95.0, lc[2] + an.dome_z + 40.0), (62.0, 48.0, 55.0)
    )
    img[heart] = scan.vessel_hu - 60.0
    fr.abdomen = fr.cavity & ~thorax


def _render_organs(an: Anatomy, scan: Scan, fr: _Frame, img: np.ndarray) -> None:
    """Kidneys, spleen, stomach (with air) and paraspinal muscles (in place)."""
    ax2, ay2, az, abdomen = fr.ax2, fr.ay2, fr.az, fr.abdomen
    lc = [float(v) for v in an.liver_center]
    s = an.spine_y
    organs = [
        ((68.0, s + 5.0, lc[2] - 95.0), (26.0, 30.0, 55.0), scan.vessel_hu - 20.0),  # right kidney
        ((-68.0, s + 5.0, lc[2] - 75.0), (26.0, 30.0, 55.0), scan.vessel_hu - 20.0),  # left kidney
        ((-100.0, s + 25.0, lc[2] + 5.0), (28.0, 48.0, 55.0), scan.liver_hu + 45.0),  # spleen
        ((-58.0, s + 95.0, lc[2] + 5.0), (42.0, 36.0, 50.0), 18.0),  # stomach (fluid)
    ]
    for c, r, hu in organs:
        img[abdomen & _ellipsoid(ax2, ay2, az, c, r)] = hu
    stomach_air = abdomen & _ellipsoid(ax2, ay2, az, organs[3][0], organs[3][1]) & (ay2 > s + 115.0)
    img[stomach_air] = -1000.0
    # Paraspinal muscles behind the spine.
    for side in (-1.0, 1.0):
        img[
            (fr.depth >= an.fat)
            & _ellipsoid(ax2, ay2, az, (side * 30.0, s - 42.0, 0.0), (24.0, 24.0, 1e6))
        ] = scan.muscle_hu


def _liver_box(an: Anatomy, scan: Scan, fr: _Frame) -> tuple[slice, ...] | None:
    """Voxel box that holds the posed liver template (plus a margin), or None if outside."""
    rot = np.asarray(an.liver_rot)
    scl = np.asarray(an.liver_scale)
    lo, hi = _LIVER_BOX
    margin = 25.0
    corners = np.array(
        [
            [x, y, z]
            for x in (lo[0] - margin, hi[0] + margin)
            for y in (lo[1] - margin, hi[1] + margin)
            for z in (lo[2] - margin, hi[2] + 70)
        ]
    )
    anat = (rot @ (corners * scl).T).T + np.asarray([float(v) for v in an.liver_center])
    # back to world: world = Rz(yaw)^T anat + shift
    cy, sy = fr.cos_yaw, fr.sin_yaw
    wc = np.stack(
        [cy * anat[:, 0] - sy * anat[:, 1], sy * anat[:, 0] + cy * anat[:, 1], anat[:, 2]], 1
    )
    wc += np.asarray(scan.shift)
    sp, shape, affine = fr.spacing, fr.shape, fr.affine
    idx_lo = [max(0, math.floor((wc[:, i].min() - affine[i, 3]) / sp[i])) for i in range(3)]
    idx_hi = [
        min(shape[i], math.ceil((wc[:, i].max() - affine[i, 3]) / sp[i]) + 1) for i in range(3)
    ]
    if not all(h > l for l, h in zip(idx_lo, idx_hi, strict=True)):
        return None
    return tuple(slice(l, h) for l, h in zip(idx_lo, idx_hi, strict=True))


def _liver_coords(an: Anatomy, bx: np.ndarray, by: np.ndarray, bz: np.ndarray) -> list:
    """Deformed liver-local template coordinates (mm) of anatomical points.

    u0 = R^T (p - centre) / scale, then the subject's smooth sinusoidal deformation.
    """
    lc = [float(v) for v in an.liver_center]
    d = [bx - lc[0], by - lc[1], bz - lc[2]]
    rf, sf = np.asarray(an.liver_rot).tolist(), np.asarray(an.liver_scale).tolist()
    u0 = [(rf[0][i] * d[0] + rf[1][i] * d[1] + rf[2][i] * d[2]) / sf[i] for i in range(3)]
    u = [c.astype(np.float32) for c in u0]
    for wx_, wy_, wz_, phase, dx, dy, dz in an.deform:
        wave = np.sin(wx_ * u0[0] + wy_ * u0[1] + wz_ * u0[2] + phase)
        u[0] = u[0] + dx * wave
        u[1] = u[1] + dy * wave
        u[2] = u[2] + dz * wave
    return u


def _render_liver(an: Anatomy, scan: Scan, fr: _Frame, img: np.ndarray, label: np.ndarray) -> int:
    """Liver parenchyma, gallbladder, portal trunk, lesions and vessels, and the segment
    label, inside the liver box (in place). Returns the number of lesion voxels."""
    box = _liver_box(an, scan, fr)
    if box is None:
        return 0
    bx, by, bz = fr.ax2[box[0], box[1], :], fr.ay2[box[0], box[1], :], fr.az[:, :, box[2]]
    u = _liver_coords(an, bx, by, bz)
    fields = _liver_fields(np.stack(np.broadcast_arrays(*u)), an)
    sub_dia = np.broadcast_to(fr.diaphragm, fr.shape)[box]
    sub_cav = np.broadcast_to(fr.cavity, fr.shape)[box]
    ivc_in_box = ((bx - an.ivc_xy[0]) ** 2 + (by - an.ivc_xy[1]) ** 2 <= 11.0**2) & np.ones_like(
        bz, bool
    )
    liver = (
        fields["liver"]
        & sub_cav
        & (np.broadcast_to(bz, sub_dia.shape) < sub_dia - 5.0)
        & ~ivc_in_box
        & ~fields["gallbladder"]
    )
    sub = img[box]
    sub[fields["gallbladder"] & sub_cav & ~liver] = 8.0
    sub[fields["trunk"] & sub_cav] = scan.vessel_hu
    sub[liver] = scan.liver_hu
    lesion = np.zeros_like(liver)
    for lx, ly, lz, lr in an.lesions:
        g = scan.lesion_growth
        lesion |= (
            ((u[0] - lx) / (lr * g)) ** 2
            + ((u[1] - ly) / (lr * 0.9 * g)) ** 2
            + ((u[2] - lz) / (lr * 1.1 * g)) ** 2
        ) <= 1.0
    lesion &= liver
    sub[lesion] = scan.liver_hu - 38.0
    sub[fields["vessel"] & liver] = scan.vessel_hu
    img[box] = sub
    label[box] = np.where(liver, fields["segment"], 0)
    return int(lesion.sum())


def _render_vessels_spine(an: Anatomy, scan: Scan, fr: _Frame, img: np.ndarray) -> np.ndarray:
    """IVC, aorta and spine, drawn last because they cut through everything."""
    ax2, ay2, az, shape = fr.ax2, fr.ay2, fr.az, fr.shape
    ivc = ((ax2 - an.ivc_xy[0]) ** 2 + (ay2 - an.ivc_xy[1]) ** 2 <= 11.0**2) & (
        az < fr.diaphragm + 20
    )
    aorta = (ax2 - an.aorta_xy[0]) ** 2 + (ay2 - an.aorta_xy[1]) ** 2 <= 11.5**2
    img[np.broadcast_to(ivc, shape)] = scan.vessel_hu - 25.0
    img[np.broadcast_to(aorta & (fr.depth > 0), shape)] = scan.vessel_hu - 5.0
    s = an.spine_y
    vb = (ax2**2 + (ay2 - s) ** 2) ** 0.5  # vertebral body: cortical shell, cancellous core
    lc_z = float(an.liver_center[2])
    disc = np.cos(2 * math.pi * (az - lc_z) / 32.0) > 0.88  # intervertebral discs every 32 mm
    img = np.where(vb <= 18.0, np.where(vb > 15.5, 650.0, np.where(disc, 85.0, 240.0)), img)
    post = _ellipsoid(ax2, ay2, az, (0.0, s - 38.0, 0.0), (6.0, 22.0, 1e6)) | _ellipsoid(
        ax2, ay2, az, (0.0, s - 21.0, 0.0), (16.0, 5.0, 1e6)
    )
    return np.where(post & ~np.broadcast_to(disc, post.shape) & (vb > 18.0), 520.0, img).astype(
        np.float32
    )


def _acquire(
    an: Anatomy, scan: Scan, fr: _Frame, img: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The scanner: partial-volume blur (PSF), smooth bias, cupping, correlated noise and
    quantisation to int16 HU."""
    sc = SCANNERS[scan.scanner]
    img = ndimage.gaussian_filter(
        img, sigma=(sc["psf_xy"], sc["psf_xy"], sc["psf_z"]), mode="nearest"
    )
    nx = (fr.ax2 / an.body_a).astype(np.float32)
    ny = (fr.ay2 / an.body_b).astype(np.float32)
    nz = (fr.az / 150.0).astype(np.float32)
    b0, b1, b2, b3 = scan.bias
    gain = 1.0 + b0 * nx + b1 * ny + b2 * nz + b3 * nx * ny  # smooth multiplicative bias
    body = fr.depth >= 0
    img = (img + 1000.0) * gain - 1000.0  # on attenuation, so air stays near -1000
    img = img - np.where(body, scan.cupping * np.clip(1.0 - fr.rad**2, 0, 1), 0.0)  # beam hardening
    if scan.noise_sd > 0:
        noise = rng.standard_normal(fr.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0.6, 0.6, 0.3), mode="wrap")
        noise *= scan.noise_sd / max(float(noise.std()), 1e-6)  # correlated CT-like noise
        img = img + noise
    return np.clip(np.rint(img), HU_MIN, HU_MAX).astype(np.int16)


def render(
    anatomy: Anatomy,
    scan: Scan,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
) -> SyntheticVolume:
    """Render one scan to an int16 HU image and its uint8 truth label on a ``shape`` grid.

    Tissue classes are evaluated at voxel centres (the label is exactly that map); the image
    is then blurred with the scanner's point-spread function (partial-volume effect), biased
    and made noisy. ``rng`` supplies only the noise, so the label never depends on it. The
    steps run in a fixed order, each painting over the previous ones.
    """
    fr = _frame(scan, shape)
    img = _render_body(anatomy, scan, fr)
    _render_thorax(anatomy, scan, fr, img)
    _render_organs(anatomy, scan, fr, img)
    label = np.zeros(shape, dtype=np.uint8)
    lesion_voxels = _render_liver(anatomy, scan, fr, img, label)
    img = _render_vessels_spine(anatomy, scan, fr, img)
    image = _acquire(anatomy, scan, fr, img, rng)
    voxel_ml = float(np.prod(scan.spacing)) / 1000.0
    meta = {
        "scanner": scan.scanner,
        "has_lesion": bool(lesion_voxels > 0),
        "n_lesions": len(anatomy.lesions) if lesion_voxels > 0 else 0,
        "liver_volume_ml": round(float((label > 0).sum()) * voxel_ml, 1),
    }
    return SyntheticVolume(image=image, label=label, affine=fr.affine, metadata=meta)


def generate_volume(
    shape: tuple[int, int, int] | list[int],
    spacing: tuple[float, float, float] | None = None,
    rng: np.random.Generator | int | None = 0,
    noise_hu: float = 12.0,
    lesion_probability: float = 0.3,
) -> SyntheticVolume:
    """Render one independent synthetic CT volume of any size (e.g. 256^3 for benchmarks).

    ``spacing`` None draws the field of view from the simulated scanner (the body fits the
    grid); an explicit spacing keeps the physical anatomy and crops or pads it.
    """
    shape = _check_shape(shape)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    # Independent child streams: the anatomy, the scan and the noise never shift each other.
    anatomy_rng, scan_rng, noise_rng = gen.spawn(3)
    anatomy = sample_anatomy(anatomy_rng, lesion_probability)
    scan = sample_scan(scan_rng, anatomy, shape, noise_hu, spacing)
    return render(anatomy, scan, shape, noise_rng)


def _check_shape(shape: Any) -> tuple[int, int, int]:
    vals = tuple(int(v) for v in shape)
    if len(vals) != 3 or min(vals) < 8:
        raise ValueError(f"synthetic shape {list(shape)}: need three sizes >= 8 voxels")
    return vals  # type: ignore[return-value]
