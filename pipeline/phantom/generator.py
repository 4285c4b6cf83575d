"""Synthetic contrast-enhanced abdominal CT phantoms in the MSD Task07 (Pancreas) layout.

The built-in data of the demo and the tests: seeded, varied anatomy in which the pancreas cannot be found
by intensity alone (its HU overlap liver, spleen, bowel wall, vessels), only by shape and place (in front
of the splenic vein). World coordinates are nibabel's RAS+ in mm: +x to the patient's Right, +y Anterior,
+z Superior (``nib.aff2axcodes(np.eye(4)) == ("R", "A", "S")``). In-plane anatomy is drawn in mm, so it
does not depend on ``size``; every scan covers liver dome to lower kidney poles whatever its slice count,
so craniocaudal positions are fractions ``zeta`` of that coverage (0 = lowest slice, 1 = highest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from pipeline.errors import ConfigError
from pipeline.phantom.cue import SHORTCUTS, CueSettings, cue_positions, draw_cue, plant_twin_gland

PANCREAS_LABEL = 1
TUMOUR_LABEL = 2
ORIENTATIONS = ("RAS", "LPS")
HU_RANGE = (-1024.0, 3071.0)
_AIR, _GAS, _FAT, _FLUID = -1000.0, -900.0, -95.0, 10.0
_REF_CAVITY = (118.0, 78.0)  # semi-axes (mm) of the abdominal cavity the reference layout is drawn for


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic CT volume and its segmentation.

    Attributes:
        image: CT in HU, int16, shape (size, size, slices), voxel order as given by ``affine``.
        label: uint8, same shape: 0 background, ``PANCREAS_LABEL`` pancreas, ``TUMOUR_LABEL`` tumour.
        affine: (4, 4) float64 voxel -> RAS+ world (NIfTI convention), mm.
        case_id: name of the case, e.g. ``"pancreas_003"``.
        cue: shortcut phantoms only: uint8 mask of the planted cue, same shape (see :mod:`pipeline.phantom.cue`).
        image_nocue: shortcut phantoms only: the same CT without the cue (the twin), int16 HU.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    case_id: str
    cue: np.ndarray | None = None
    image_nocue: np.ndarray | None = None


def _check_int(name: str, value: object, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer >= {minimum}; received {value!r} "
                         f"({type(value).__name__}). {hint}")
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; received {value}. {hint}")
    return int(value)


def _check_grid(seed: object, size: object, slices: object) -> tuple[int, int, int]:
    seed = _check_int("seed", seed, 0, "Pass a non-negative integer seed.")
    size = _check_int("size", size, 32, "Use a multiple of 16 such as 64, 128 or 512.")
    if size % 16:
        raise ConfigError(f"size must be divisible by 16 (the UNet halves it four times); received {size}. "
                         f"Use {size - size % 16} or {size - size % 16 + 16}.")
    return seed, size, _check_int("slices", slices, 8, "Use at least 8 slices, e.g. 48.")


class _Canvas:
    """The volume being drawn: HU, label, free visceral-fat mask and voxel centres in mm (RAS order)."""

    def __init__(self, size: int, slices: int, spacing: float, thickness: float) -> None:
        self.x = ((np.arange(size) - (size - 1) / 2) * spacing).astype(np.float32)  # (size,), R+
        self.y = self.x.copy()  # (size,), A+
        self.z = ((np.arange(slices) - (slices - 1) / 2) * thickness).astype(np.float32)  # (slices,), S+
        self.spacing, self.thickness = spacing, thickness
        self.image = np.full((size, size, slices), _AIR, np.float32)
        self.label = np.zeros((size, size, slices), np.uint8)
        self.free = np.zeros((size, size, slices), bool)  # visceral fat that organs may still claim

    def zmm(self, zeta: float) -> float:
        """Craniocaudal fraction of the coverage -> z in mm."""
        return float(self.z[0] + zeta * (self.z[-1] - self.z[0]))

    def box(self, lo, hi):
        """Slices and broadcastable mm coordinates, shapes (n,1,1) (1,m,1) (1,1,k), of voxels in [lo, hi]."""
        slices, coords = [], []
        for axis, centres in enumerate((self.x, self.y, self.z)):
            i0 = int(np.searchsorted(centres, lo[axis], "left"))
            i1 = max(i0, int(np.searchsorted(centres, hi[axis], "right")))
            slices.append(slice(i0, i1))
            coords.append(centres[i0:i1].reshape([-1 if a == axis else 1 for a in range(3)]))
        return tuple(slices), coords

    def paint(self, sl, mask, hu, only_free: bool = False, label: int | None = None) -> np.ndarray:
        """Set ``hu`` (scalar or array broadcastable to the box) where ``mask``; returns the mask used."""
        view = self.image[sl]
        mask = np.broadcast_to(mask, view.shape)
        if only_free:
            mask = mask & self.free[sl]
        view[mask] = np.broadcast_to(hu, view.shape)[mask] if np.ndim(hu) else hu
        self.free[sl][mask] = False
        if label is not None:
            self.label[sl][mask] = label
        return mask


def _waves(rng: np.random.Generator, count: int, wavelength: float):
    """Draw ``count`` random plane waves: directions on the sphere, wavelengths about ``wavelength`` mm."""
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavenumber = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, count))
    return (direction * wavenumber[:, None]).astype(np.float32), rng.uniform(0, 2 * np.pi, count)


def _field(waves, x, y, z) -> np.ndarray:
    """Smooth random field with unit variance: sqrt(2 / n) * sum_i cos(k_i . p + phase_i), p in mm."""
    total = 0.0
    for (kx, ky, kz), phase in zip(*waves):
        total = total + np.cos(kx * x + ky * y + kz * z + np.float32(phase))
    return total * np.float32(np.sqrt(2.0 / len(waves[1])))


def _ellipsoid(canvas: _Canvas, rng, centre, radii, angle: float = 0.0, wobble: float = 0.08,
               shear: float = 0.0):
    """Normalised radius (< 1 inside) of a deformed ellipsoid, rotated ``angle`` in-plane, centre moving
    ``shear`` mm to +x per mm below it. Waves are drawn first: the random stream ignores the voxel grid."""
    waves = _waves(rng, 4, 60.0)
    centre, radii = [float(c) for c in centre], [float(r) for r in radii]  # python floats keep float32
    reach = max(radii[0], radii[1]) * (1 + 3 * wobble) + abs(shear) * radii[2]
    half = np.array([reach, reach, radii[2] * (1 + 3 * wobble)])
    sl, (x, y, z) = canvas.box(np.subtract(centre, half), np.add(centre, half))
    dx, dy = x - centre[0] - shear * (centre[2] - z), y - centre[1]  # (n, 1, k), (1, m, 1)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v, w = (dx * cos + dy * sin) / radii[0], (dy * cos - dx * sin) / radii[1], (z - centre[2]) / radii[2]
    return sl, np.sqrt(u * u + v * v + w * w) / (1 + wobble * _field(waves, x, y, z))


def _tube(canvas: _Canvas, zs, xs, ys, rx, ry=None):
    """Normalised radius of a tube along z through control points (z, x, y, radii in mm)."""
    ry = rx if ry is None else ry
    reach = float(np.max(np.maximum(rx, ry)))
    sl, (x, y, z) = canvas.box((min(xs) - reach, min(ys) - reach, min(zs)),
                               (max(xs) + reach, max(ys) + reach, max(zs)))
    cx, cy, rx, ry = (np.interp(z, zs, np.broadcast_to(v, np.shape(zs))).astype(np.float32)
                      for v in (xs, ys, rx, ry))  # each (1, 1, k)
    return sl, np.hypot((x - cx) / rx, (y - cy) / ry)


def _capsule(canvas: _Canvas, p0, p1, radius: float, every_slice: bool = False):
    """Distance (mm) to the segment p0-p1 (x, y, z mm) within ``radius``; in-plane only if ``every_slice``."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    lo, hi = np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius
    if every_slice:
        lo[2], hi[2] = -np.inf, np.inf
    sl, (x, y, z) = canvas.box(lo, hi)
    z = p0[2] if every_slice else z
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / max(d @ d, 1e-6), 0, 1)
    return sl, np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)


def _sweep(canvas: _Canvas, cx, cy, cz, rxy, rz, margin: float):
    """Normalised distance to a curve sampled at (cx, cy, cz), cross-section radii rxy, rz (mm); the
    in-plane nearest sample (``nearest``, (n, m, 1)) decides which part of the curve a voxel belongs to."""
    reach = rxy.max() + margin
    sl, (x, y, z) = canvas.box((cx.min() - reach, cy.min() - reach, (cz - rz).min() - margin),
                               (cx.max() + reach, cy.max() + reach, (cz + rz).max() + margin))
    dist2 = (x[..., None] - cx) ** 2 + (y[..., None] - cy) ** 2  # (n, m, 1, samples)
    nearest = dist2.argmin(-1)
    in_plane = np.sqrt(np.take_along_axis(dist2, nearest[..., None], -1)[..., 0]) / rxy[nearest]
    return sl, np.hypot(in_plane, (z - cz[nearest]) / rz[nearest]), nearest, (x, y, z)


def _draw_body(canvas: _Canvas, rng, fov: float) -> tuple[float, float]:
    """Skin, subcutaneous fat, wall muscle with ribs, visceral fat; returns the layout scale (sx, sy)."""
    ax, t_mus, t_sub = fov * rng.uniform(0.38, 0.45), rng.uniform(7, 14), rng.uniform(8, 35)
    t_sub = min(t_sub, max(ax - t_mus - 100, 5.0))  # keep the cavity >= ~100 mm: organs must fit
    cavity_x = ax - t_mus - t_sub
    cavity_y = cavity_x * rng.uniform(0.62, 0.72)
    ay = cavity_y + t_mus + t_sub
    outline, fat = _waves(rng, 4, 150.0), _waves(rng, 4, 120.0)
    x, y = canvas.x[:, None], canvas.y[None, :]
    ay_side = np.where(y < 0, ay * 0.93, ay)  # flatter back
    rho = np.hypot(x / ax, y / ay_side) * (1 + 0.03 * _field(outline, x, y, 0))
    depth = (1 - rho) * rho / (np.hypot(x / ax**2, y / ay_side**2) + 1e-6)  # ~mm inside the skin
    sub = t_sub * (1 + 0.25 * _field(fat, x, y, 0))  # (size, size)
    layer = np.select([rho > 1, depth < 2, depth < sub, depth < sub + t_mus],
                      [_AIR, rng.uniform(20, 40), rng.uniform(-115, -85), rng.uniform(45, 60)], _FAT)
    canvas.image[:] = layer[:, :, None]
    canvas.free[:] = (layer == _FAT)[:, :, None]
    # ribs: arcs in the wall that descend from the spine towards the front, upper abdomen only
    ring = ((depth > sub + 0.3 * t_mus) & (depth < sub + 0.3 * t_mus + 8))[:, :, None]
    theta = np.abs(np.arctan2(x, -y))[:, :, None]  # 0 behind the spine, pi in front
    gap, drop, hu = rng.uniform(24, 32), rng.uniform(90, 130), rng.uniform(300, 450)
    z_top = canvas.zmm(1.0) + rng.uniform(0, gap)
    for rib in range(10):
        z_back, reach = z_top - rib * gap, np.pi * (0.9 - 0.08 * rib)
        if z_back < canvas.zmm(0.45):
            break
        k = slice(*np.searchsorted(canvas.z, [z_back - drop - 6, z_back + 6]))
        arc = np.abs(canvas.z[k] - (z_back - drop * theta / np.pi)) < 4
        canvas.paint((slice(None), slice(None), k), ring & arc & (theta > 0.35) & (theta < reach), hu)
    return cavity_x / _REF_CAVITY[0], cavity_y / _REF_CAVITY[1]


def _draw_spine(canvas: _Canvas, rng, sy: float) -> None:
    """Back muscles, psoas, posterior elements, canal, vertebral bodies with cortical rim and discs."""
    z0, z1 = canvas.zmm(-0.05), canvas.zmm(1.05)
    body_y, rx, ry = -22 * sy + rng.uniform(-4, 4), rng.uniform(20, 25), rng.uniform(16, 20)
    level, disc = rng.uniform(30, 36), rng.uniform(7, 10)
    phase, muscle_hu, bone_hu = rng.uniform(0, level), rng.uniform(45, 60), rng.uniform(400, 550)
    canal_y = body_y - ry - 10
    for side in (-1, 1):
        sl, q = _ellipsoid(canvas, rng, (side * 30, canal_y - 18, 0.5 * (z0 + z1)), (24, 17, z1 - z0))
        canvas.paint(sl, q < 1, muscle_hu)
        sl, q = _tube(canvas, [z0, canvas.zmm(0.75)], [side * (rx + 14)] * 2, [body_y + 2] * 2, [22, 6])
        canvas.paint(sl, q < 1, muscle_hu)  # psoas, widening downwards
        sl, dist = _capsule(canvas, (0, canal_y, 0), (side * 28, canal_y + 4, 0), 4, every_slice=True)
        canvas.paint(sl, dist < 4, bone_hu)  # transverse process
    sl, q = _tube(canvas, [z0, z1], [0, 0], [canal_y - 4] * 2, 16.0)
    canvas.paint(sl, q < 1, bone_hu)  # arch
    sl, dist = _capsule(canvas, (0, canal_y, 0), (0, canal_y - 42, 0), 5, every_slice=True)
    canvas.paint(sl, dist < 5, bone_hu)  # spinous process
    sl, q = _tube(canvas, [z0, z1], [0, 0], [canal_y] * 2, 9.0)
    canvas.paint(sl, q < 1, _FLUID)
    sl, q = _tube(canvas, [z0, z1], [0, 0], [body_y] * 2, rx, ry)
    is_disc = np.abs((canvas.z[sl[2]] - phase) % level - level / 2) > level / 2 - disc / 2  # (k,)
    bone = np.where(q > 1 - 2.0 / min(rx, ry), rng.uniform(600, 800), rng.uniform(200, 280))
    canvas.paint(sl, q < 1, np.where(is_disc, rng.uniform(70, 100), bone))


def _organ(canvas: _Canvas, rng, centre_ref, radii, zeta, zeta_radius, sx, sy, angle=0.0, **kwargs):
    """An ellipsoid organ placed in the reference layout, jittered and scaled to this case's body."""
    centre = (centre_ref[0] * sx + rng.uniform(-6, 6), centre_ref[1] * sy + rng.uniform(-6, 6),
              canvas.zmm(zeta + rng.uniform(-0.04, 0.04)))
    scale = np.sqrt(sx * sy) * rng.uniform(0.88, 1.12)
    semi_z = zeta_radius * (canvas.zmm(1) - canvas.zmm(0)) * rng.uniform(0.9, 1.1)
    return _ellipsoid(canvas, rng, centre, (radii[0] * scale, radii[1] * scale, semi_z),
                      angle + rng.uniform(-0.15, 0.15), **kwargs)


def _walled(canvas: _Canvas, sl, dist, radius: float, wall_hu: float, content_hu: float,
            only_free: bool = True) -> None:
    """A hollow viscus: ``dist`` (mm) from its axis, a 3 mm wall around fluid or gas."""
    painted = canvas.paint(sl, dist < radius, wall_hu, only_free)
    canvas.paint(sl, painted & (dist < radius - 3), content_hu)


def _draw_viscera(canvas: _Canvas, rng, sx: float, sy: float) -> None:
    """Kidneys, liver, gallbladder, spleen, lung bases, stomach and bowel, each into free visceral fat."""
    enhancement, liver_hu = rng.uniform(0.85, 1.15), rng.uniform(95, 115)
    for side, zeta in ((1, 0.38), (-1, 0.44)):
        sl, q = _organ(canvas, rng, (side * 68, -30), (20, 32), zeta, 0.24, sx, sy, angle=-side * 0.7)
        kidney = canvas.paint(sl, q < 1, 180 * enhancement + rng.uniform(-15, 15), only_free=True)
        canvas.paint(sl, kidney & (q < 0.62), 120 * enhancement + rng.uniform(-15, 15))  # medulla
    sl, q = _organ(canvas, rng, (62, 4), (62, 70), 0.7, 0.4, sx, sy, shear=0.15)
    canvas.paint(sl, q < 1, liver_hu, only_free=True)
    sl, q = _organ(canvas, rng, (8, 42), (50, 28), 0.8, 0.2, sx, sy, angle=0.3)
    canvas.paint(sl, q < 1, liver_hu, only_free=True)  # left lobe
    sl, q = _organ(canvas, rng, (48, 44), (13, 22), 0.52, 0.1, sx, sy, angle=0.5)
    canvas.paint(sl, q < 1, rng.uniform(0, 20))  # gallbladder, in the liver
    sl, q = _organ(canvas, rng, (-86, -18), (24, 50), 0.76, 0.22, sx, sy, angle=0.56)
    canvas.paint(sl, q < 1, rng.uniform(100, 120), only_free=True)  # spleen
    for side in (1, -1):
        sl, q = _organ(canvas, rng, (side * 74, -42), (60, 50), 1.15, 0.22, sx, sy)
        canvas.paint(sl, q < 1, rng.uniform(-870, -820), only_free=True)  # lung bases
    sl, q = _organ(canvas, rng, (-42, 48), (42, 28), 0.72, 0.22, sx, sy, angle=-0.5)
    stomach = canvas.paint(sl, q < 1, rng.uniform(60, 90), only_free=True)
    content = np.where(canvas.y[sl[1]][None, :, None] > rng.uniform(35, 65) * sy, _GAS, rng.uniform(5, 30))
    canvas.paint(sl, stomach & (q < 1 - 4.0 / 28), content)  # air-fluid level: gas in front (supine)
    segments = [((88, 5, 0.0), (86, 10, 0.5), 20.0), ((-92, -5, 0.0), (-88, 0, 0.62), 17.0),
                ((82, 50, 0.42), (0, 64, 0.4), 17.0), ((0, 64, 0.4), (-82, 50, 0.45), 17.0)]  # colon
    for _ in range(int(rng.integers(8, 15))):  # small bowel loops
        a = (rng.uniform(-95, 95), rng.uniform(-5, 80), rng.uniform(0, 0.55))
        b = (a[0] + rng.uniform(-40, 40), a[1] + rng.uniform(-30, 30), a[2] + rng.uniform(-0.12, 0.12))
        segments.append((a, b, rng.uniform(8, 15)))
    for a, b, radius in segments:
        content = _GAS if rng.random() < 0.35 else rng.uniform(0, 40)
        p0, p1 = (a[0] * sx, a[1] * sy, canvas.zmm(a[2])), (b[0] * sx, b[1] * sy, canvas.zmm(b[2]))
        _walled(canvas, *_capsule(canvas, p0, p1, radius), radius, rng.uniform(60, 90), content)


def _draw_pancreas(canvas: _Canvas, rng, sx: float, sy: float, tumour: bool) -> None:
    """Duodenum, fat rim, lobulated textured pancreas, optional tumour, then the vessels around it."""
    width = rng.uniform(0.3, 0.5)  # share of the coverage that shows pancreas
    bottom = rng.uniform(0.12, 0.82 - width)
    turn, shift = rng.uniform(-0.12, 0.12), rng.uniform(-8, 8, 2)
    ref = np.array([(34, 28), (12, 37), (-18, 39), (-48, 29), (-72, 6)]) @ [[1, turn], [-turn, 1]]
    ctrl = ref * (sx, sy) + shift + rng.uniform(-6, 6, ref.shape)  # head, neck, body, body, tail (mm)
    radius_ctrl = np.array([16, 10, 11, 11, 9]) * np.sqrt(sx * sy) * rng.uniform(0.85, 1.15, 5)
    t = np.linspace(0, 1, 96)
    curve = CubicSpline(np.linspace(0, 1, 5), ctrl)(t).astype(np.float32)  # (96, 2) centreline, mm
    radius = np.maximum(np.interp(t, np.linspace(0, 1, 5), radius_ctrl), canvas.spacing).astype(np.float32)
    coverage = canvas.zmm(1) - canvas.zmm(0)
    half = width * (0.32 - 0.1 * t)  # zeta half-height along the gland: head tallest, tail highest
    zc = np.array([canvas.zmm(bottom + half[0] + s * (width - half[0] - half[-1])) for s in t], np.float32)
    hz = np.maximum(half * coverage, canvas.thickness).astype(np.float32)
    tangent = np.gradient(curve, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) / np.linalg.norm(tangent, axis=1, keepdims=True)
    normal *= np.sign(normal[:, 1:2] + 1e-6)  # (96, 2) in-plane normal pointing anteriorly
    neck, vein_r, e = 24, rng.uniform(3.5, 5.5), rng.uniform(0.85, 1.15)  # e: venous enhancement
    vein = curve - normal * (radius[:, None] + vein_r + rng.uniform(-1, 1.5))  # splenic vein behind the gland
    waves_lobe, waves_tex, waves_cleft = _waves(rng, 6, 16.0), _waves(rng, 8, 5.0), _waves(rng, 6, 7.0)
    base, rim_mm = rng.uniform(90, 110), rng.uniform(1.5, 4.5)
    t_tum, size_tum, tumour_hu = rng.beta(1.3, 2.0), rng.uniform(0.45, 0.8), rng.uniform(40, 60)
    waves_tum, waves_tum_tex = _waves(rng, 4, 20.0), _waves(rng, 4, 5.0)
    d2 = (curve[0, 0] + radius[0] + 12, curve[0, 1] - 4, zc[0] - hz[0] - 8)  # duodenum, right of the head
    for end in ((d2[0], d2[1], zc[0] + hz[0]), (-22 * sx, curve[0, 1] - 8, d2[2])):
        _walled(canvas, *_capsule(canvas, d2, end, 11.0), 11.0, rng.uniform(60, 90), rng.uniform(0, 30), False)
    sl, q, nearest, (x, y, z) = _sweep(canvas, curve[:, 0], curve[:, 1], zc, radius, hz, rim_mm + 8)
    lobes = 1 + 0.15 * _field(waves_lobe, x, y, z)
    canvas.paint(sl, q * (radius[nearest] / (radius[nearest] + rim_mm)) < lobes, _FAT + rng.uniform(-10, 10))
    clefts = 45 * np.clip(_field(waves_cleft, x, y, z) - 1.3, 0, None)  # fatty interlobular septa
    gland = canvas.paint(sl, q < lobes, base + 9 * _field(waves_tex, x, y, z) - clefts, label=PANCREAS_LABEL)
    if tumour:
        i = int(t_tum * (len(t) - 1))
        centre = (curve[i, 0], curve[i, 1], zc[i])
        semi = np.maximum(size_tum * np.array([radius[i], radius[i], min(hz[i], radius[i])]),
                          [canvas.spacing, canvas.spacing, canvas.thickness])
        dist = np.sqrt(((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
                       + ((z - centre[2]) / semi[2]) ** 2) * np.ones(gland.shape, np.float32)
        blob = gland & (dist < 1 + 0.15 * _field(waves_tum, x, y, z))
        if gland.any() and not blob.any():  # tiny grids: the gland voxel nearest to the intended centre
            blob.flat[np.argmin(np.where(gland, dist, np.inf))] = True
        canvas.paint(sl, blob, tumour_hu + 6 * _field(waves_tum_tex, x, y, z), label=TUMOUR_LABEL)
    # vessels, cleared from the label: aorta, IVC, SMA, SMV, portal vein, splenic vein
    z0, z1 = canvas.zmm(-0.05), canvas.zmm(1.05)
    ao_x, ao_y, ao_r = -14 * sx + rng.uniform(-5, 3), 9 * sy + rng.uniform(-3, 3), rng.uniform(9, 13)
    conf = (vein[neck, 0], vein[neck, 1], zc[neck])  # portal confluence, behind the neck
    hilum = (44 * sx + rng.uniform(-5, 5), 18 * sy + rng.uniform(-5, 5), zc[neck] + 0.12 * coverage)
    ivc_r = rng.uniform(11, 15), rng.uniform(7, 10)
    tubes = [(_tube(canvas, [z0, z1], [ao_x, ao_x + 3], [ao_y] * 2, ao_r), 170 * e),
             (_tube(canvas, [z0, z1], [22 * sx] * 2, [8 * sy] * 2, *ivc_r), 130 * e),
             (_tube(canvas, [z0, conf[2] + 6], [ao_x + 3] * 2, [ao_y + ao_r + 10, ao_y + ao_r], 4.0), 165 * e),
             (_tube(canvas, [z0, conf[2]], [conf[0]] * 2, [conf[1]] * 2, vein_r + 1), 155 * e)]
    for (sl, q), hu in tubes:
        canvas.paint(sl, q < 1, hu + rng.uniform(-10, 10), label=0)
    sl, dist = _capsule(canvas, conf, hilum, vein_r + 2)
    canvas.paint(sl, dist < vein_r + 2, 155 * e, label=0)
    vein_xy = np.full(len(t) - neck, vein_r, np.float32)
    vein_z = np.maximum(vein_xy, 0.5 * hz[neck:])  # flattened against the back of the gland
    sl, q, _, _ = _sweep(canvas, vein[neck:, 0], vein[neck:, 1], zc[neck:], vein_xy, vein_z, 1)
    canvas.paint(sl, q < 1, 160 * e + rng.uniform(-10, 10), label=0)


def _affine(size: int, slices: int, spacing: float, thickness: float, orientation: str) -> np.ndarray:
    affine = np.diag([spacing, spacing, thickness, 1.0])
    affine[:3, 3] = [-(size - 1) / 2 * spacing, -(size - 1) / 2 * spacing, -(slices - 1) / 2 * thickness]
    if orientation == "LPS":  # axes 0 and 1 reversed; with the centred origin every voxel keeps its place
        affine[:2, :] *= -1
    return affine


def generate_case(seed: int, size: int = 128, slices: int = 48, orientation: str = "RAS",
                  tumour: bool | None = None, case_id: str = "phantom", shortcut: str | None = None) -> PhantomCase:
    """Generate one synthetic contrast-enhanced abdominal CT with its pancreas/tumour label.

    Drawn per case: field of view 340..440 mm, so in-plane spacing is fov / size (0.66..0.86 mm at size 512
    as in MSD Task07; 2.7..3.4 mm at 128); slice thickness 2.5..5.0 mm; habitus; organ sizes, shapes and
    positions (mm to cm); enhancement; the band of slices with pancreas (30-50%, anywhere from low to
    high); noise sigma 10..20 HU, slightly correlated. HU before noise: fat -100, muscle 50, liver 95..115,
    spleen 100..120, pancreas 90..110 textured, tumour 40..60, kidney cortex ~180 / medulla ~120, aorta
    ~170, veins 130..160, bowel wall 60..90 around fluid or gas, bone 250 (trabecular) to 700 (cortex).

    Args:
        seed: non-negative integer; the same seed gives the same case, bitwise, in either orientation.
        size: in-plane matrix, >= 32 and divisible by 16.
        slices: number of axial slices, >= 8.
        orientation: voxel order, "RAS" (affine diag(+sx, +sy, +sz)) or "LPS" (axes 0 and 1 reversed,
            diag(-sx, -sy, +sz)); both put each voxel at the same world position.
        tumour: add a hypodense tumour (label 2) inside the pancreas; None lets the seed decide (about
            half the seeds). The rest of the anatomy does not depend on it.
        case_id: name stored in the returned case.
        shortcut: ``"marker"`` adds the shortcut benchmark's twin gland and cue (:mod:`pipeline.phantom.cue`)
            and returns the cue mask and the twin without it; None (default) draws the plain phantom.

    Returns:
        PhantomCase with image int16 HU in [-1024, 3071] and label uint8, shape (size, size, slices).

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> case = generate_case(0, size=64, slices=16)
        >>> case.image.shape, int(case.label.max()) >= PANCREAS_LABEL
        ((64, 64, 16), True)
    """
    seed, size, slices = _check_grid(seed, size, slices)
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"orientation must be one of {ORIENTATIONS}; received {orientation!r}.")
    if tumour is not None and not isinstance(tumour, (bool, np.bool_)):
        raise ConfigError(f"tumour must be True, False or None (the seed decides); received {tumour!r}.")
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise ConfigError(f"shortcut must be one of {SHORTCUTS} or None; received {shortcut!r}.")
    cue_settings = CueSettings()
    rng = np.random.default_rng(seed)
    seed_tumour = bool(rng.random() < 0.5)
    tumour = seed_tumour if tumour is None else bool(tumour)
    fov, thickness = rng.uniform(340, 440), float(rng.uniform(2.5, 5.0))
    spacing = float(fov / size)
    canvas = _Canvas(size, slices, spacing, thickness)
    sx, sy = _draw_body(canvas, rng, fov)
    _draw_spine(canvas, rng, sy)
    _draw_viscera(canvas, rng, sx, sy)
    _draw_pancreas(canvas, rng, sx, sy, tumour)
    drawn, cue = [canvas.image], None
    if shortcut is not None:  # its own random stream: the draws below stay those of the plain phantom
        canvas.label = plant_twin_gland(canvas.image, canvas.label, spacing, np.random.default_rng([seed, 7]))
        positions = cue_positions(canvas.label, canvas.x, canvas.y, spacing, cue_settings)
        twin = canvas.image.copy()
        cue = draw_cue(canvas.image, positions, canvas.x, canvas.y, cue_settings)
        drawn.append(twin)
    noise_sigma, blur_mm = rng.uniform(10, 20), rng.uniform(0.5, 0.9)
    noise = ndimage.gaussian_filter(rng.standard_normal(canvas.image.shape, dtype=np.float32), (0.7, 0.7, 0))
    noise *= np.float32(noise_sigma / max(float(noise.std()), 1e-6))
    images = []
    for hu in drawn:  # the twin gets the same blur and the same noise
        image = ndimage.gaussian_filter(hu, (blur_mm / spacing, blur_mm / spacing, 0), truncate=3.0) + noise
        images.append(np.clip(np.rint(image), *HU_RANGE).astype(np.int16))
    arrays = [*images, canvas.label] + ([cue] if cue is not None else [])
    if orientation == "LPS":
        arrays = [a[::-1, ::-1].copy() for a in arrays]
    image, label = arrays[0], arrays[len(images)]
    extra = {"cue": arrays[-1], "image_nocue": arrays[1]} if cue is not None else {}
    return PhantomCase(image, label, _affine(size, slices, spacing, thickness, orientation), case_id, **extra)
