"""A street-scene segmentation pair drawn from a seed, in the Cityscapes label space, so the
segmentation quickstart and its tests need no download.

- ``streets-sim`` (simulation): each region one flat colour, jittered around its material's base
  colour (grey asphalt, green foliage, ...), sharp edges: the look of a cheap renderer.
- ``streets-real`` ("real"): layouts of the same kind with other statistics (horizon, lens, car
  sizes, more trees), each region textured in perspective with scikit-image's bundled photographs
  (gravel roads, brick facades with windows, grass foliage, photo crops as clothes), lane markings,
  then blurred, colour-cast and noised like a camera.

A scene is a pinhole camera ``CAMERA`` metres above a straight street (x to the right, z up, d
ahead, in metres): road, a sidewalk each side, building boxes, parks and gaps along both sides, a
skyline at the horizon, and cars, people, poles and trees drawn far to near. Shapes are drawn as
instance ids with Pillow; colours come from per-instance tables by numpy indexing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dabench.data import SEGMENTATION, Domain, TensorImages, image_count
from dabench.errors import DabenchError
from dabench.registry import plugin
from dabench.segdata.pairs import scaled
from dabench_plugins.datasets.cityscapes import PALETTE

CLASSES = ["road", "sidewalk", "building", "pole", "vegetation", "sky", "person", "car"]
DEFAULT_SIZE = (128, 64)  # (W, H): Cityscapes' 2:1 at a size one CPU core trains on
DEFAULT_COUNT = 600
MIN_HEIGHT = 16
SIM_SEED, REAL_SEED = 0, 1
CAMERA = 1.5  # camera height above the road, metres
NEAR, FAR = 0.5, 400.0  # the ground is drawn between these depths, metres
MAX_INSTANCES = 256  # instance ids are uint8
TEXTURE_SIZE = 256
# scikit-image's images that ship in its wheel (the rest of skimage.data needs a download): the
# skimage.data function -> its file in skimage.data_dir, read with Pillow when it is there (the
# functions import skimage.io, a third of a second).
PHOTOS = {"astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg",
          "immunohistochemistry": "ihc.png", "stereo_motorcycle": "motorcycle_left.png"}
GREYS = {"brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "moon": "moon.png",
         "camera": "camera.png", "text": "text.png", "page": "page.png", "coins": "coins.png",
         "clock": "clock_motion.png", "cell": "cell.png"}


@dataclass(frozen=True)
class Material:
    """What a region is made of: its class, its flat colour in streets-sim, and how streets-real
    textures it: colour = tint * (1 - contrast + 2 * contrast * texture), texture in [0, 1]."""

    cls: str
    colour: tuple[int, int, int]  # streets-sim base colour, jittered per instance
    textures: tuple[str, ...]
    tints: tuple[tuple[float, float, float], ...]  # one is picked per instance, then jittered
    mapping: str = "screen"  # "screen", "ground" (the road plane) or "facade" (a wall along the street)
    scale: tuple[float, float] = (0.5, 1.5)  # texture pixels per image pixel ("screen") or per metre
    contrast: tuple[float, float] = (0.3, 0.8)
    jitter: float = 25.0  # streets-sim colour jitter, 0-255 units per channel


CAR_PAINTS = ((0.85, 0.85, 0.85), (0.15, 0.15, 0.16), (0.55, 0.56, 0.6), (0.6, 0.1, 0.1), (0.12, 0.2, 0.5),
              (0.3, 0.32, 0.3), (0.7, 0.6, 0.45))
MATERIALS = {
    "sky": Material("sky", (115, 165, 225), ("clouds",), ((0.55, 0.7, 0.95), (0.78, 0.8, 0.84), (0.6, 0.72, 0.9)),
                    scale=(0.6, 1.2), contrast=(0.15, 0.5), jitter=15),
    "skyline": Material("building", (150, 145, 150), ("brick", "page", "cell", "moon"),
                        ((0.6, 0.62, 0.68), (0.7, 0.68, 0.66), (0.5, 0.52, 0.58)), contrast=(0.2, 0.5)),
    "facade": Material("building", (165, 125, 100), ("brick", "page", "text", "coins", "moon"),
                       ((0.75, 0.5, 0.4), (0.72, 0.7, 0.64), (0.88, 0.86, 0.82), (0.52, 0.53, 0.57), (0.8, 0.72, 0.55)),
                       mapping="facade", scale=(40, 90), contrast=(0.3, 0.7), jitter=30),
    "foliage": Material("vegetation", (70, 130, 50), ("grass", "gravel", "moon"),
                        ((0.32, 0.5, 0.22), (0.25, 0.38, 0.16), (0.42, 0.55, 0.3)), scale=(0.8, 2.0),
                        contrast=(0.5, 0.9)),
    "trunk": Material("vegetation", (100, 75, 50), ("grass", "brick"), ((0.4, 0.3, 0.22),), contrast=(0.4, 0.8)),
    "road": Material("road", (95, 95, 100), ("gravel", "moon"), ((0.42, 0.42, 0.44), (0.32, 0.32, 0.34),
                     (0.5, 0.48, 0.46)), mapping="ground", scale=(40, 120), contrast=(0.2, 0.5), jitter=15),
    "sidewalk": Material("sidewalk", (180, 160, 150), ("brick", "gravel", "page"),
                         ((0.68, 0.64, 0.6), (0.58, 0.58, 0.6), (0.72, 0.58, 0.58)), mapping="ground",
                         scale=(40, 100), contrast=(0.3, 0.6)),
    "pole": Material("pole", (120, 125, 140), ("moon", "camera"), ((0.5, 0.5, 0.52), (0.3, 0.32, 0.3),
                     (0.62, 0.6, 0.55)), contrast=(0.2, 0.5)),
    "skin": Material("person", (225, 175, 145), ("chelsea", "coffee", "astronaut"),
                     ((0.9, 0.7, 0.6), (0.55, 0.4, 0.3), (0.8, 0.6, 0.45)), contrast=(0.2, 0.4), jitter=20),
    "shirt": Material("person", (200, 60, 60), tuple(PHOTOS), ((0.6, 0.6, 0.6), (0.45, 0.45, 0.5)), scale=(0.3, 1.0),
                      contrast=(0.8, 1.0), jitter=35),
    "trousers": Material("person", (60, 60, 110), tuple(PHOTOS), ((0.3, 0.3, 0.35), (0.2, 0.2, 0.22)), scale=(0.3, 1.0),
                         contrast=(0.8, 1.0), jitter=25),
    "paint": Material("car", (40, 70, 175), ("moon", "camera", "clock"), CAR_PAINTS, contrast=(0.1, 0.35), jitter=45),
    "glass": Material("car", (40, 45, 60), ("camera", "moon"), ((0.2, 0.22, 0.28), (0.3, 0.32, 0.35)),
                      contrast=(0.3, 0.6), jitter=15),
    "tyre": Material("car", (25, 25, 25), ("gravel",), ((0.12, 0.12, 0.12),), contrast=(0.2, 0.5), jitter=10),
}
MATERIAL_NAMES = list(MATERIALS)


@dataclass(frozen=True)
class Layout:
    """The statistics of one domain's scenes (lengths in metres, counts as [low, high) ranges)."""

    horizon: tuple[float, float] = (0.32, 0.5)  # fraction of the height from the top
    offset: float = 0.12  # vanishing point, +- this fraction of the width off centre
    focal: tuple[float, float] = (0.9, 1.1)  # focal length as a fraction of the width
    road: tuple[float, float] = (6.0, 14.0)
    sidewalk: tuple[float, float] = (1.5, 4.0)
    frontage: tuple[float, float, float] = (0.75, 0.15, 0.10)  # building, park, gap
    storeys: tuple[int, int] = (2, 9)
    cars: tuple[int, int] = (1, 7)
    car_size: tuple[float, float] = (0.9, 1.05)
    persons: tuple[int, int] = (2, 8)
    poles: tuple[int, int] = (2, 6)
    trees: tuple[int, int] = (0, 4)


SIM_LAYOUT = Layout()
REAL_LAYOUT = Layout(horizon=(0.38, 0.55), offset=0.08, focal=(1.05, 1.3), road=(7.0, 12.0),
                     frontage=(0.65, 0.25, 0.10), storeys=(3, 7), cars=(2, 8), car_size=(1.0, 1.15), trees=(1, 6))


class Scene:
    """One street drawn as instance ids (0-255), with each instance's material and, for facades,
    the x of its wall plane. The camera looks along d; a point (x, z, d) is seen at
    (vx + f x / d, horizon + f (CAMERA - z) / d)."""

    def __init__(self, rng: np.random.Generator, layout: Layout, w: int, h: int):
        self.rng, self.w, self.h = rng, w, h
        self.horizon = h * rng.uniform(*layout.horizon)
        self.vx = w * (0.5 + rng.uniform(-layout.offset, layout.offset))
        self.f = w * rng.uniform(*layout.focal)
        self.ids = Image.new("L", (w, h))
        self.pen = ImageDraw.Draw(self.ids)
        self.materials: list[int] = []
        self.planes: list[float] = []

    def new(self, material: str, plane: float = 0.0) -> int:
        if len(self.materials) == MAX_INSTANCES:  # the layouts above use about 120 at most
            raise RuntimeError(f"a street scene holds at most {MAX_INSTANCES} instances (uint8 ids)")
        self.materials.append(MATERIAL_NAMES.index(material))
        self.planes.append(plane)
        return len(self.materials) - 1

    def xy(self, x: float, z: float, d: float) -> tuple[float, float]:
        return self.vx + self.f * x / d, self.horizon + self.f * (CAMERA - z) / d

    def ground(self, inst: int, x0: float, x1: float) -> None:
        p = self.xy
        self.pen.polygon([p(x0, 0, NEAR), p(x1, 0, NEAR), p(x1, 0, FAR), p(x0, 0, FAR)], fill=inst)

    def box(self, inst: int, x: tuple[float, float], z: tuple[float, float], d: tuple[float, float]) -> None:
        """A box's silhouette: its faces that face the camera (at x = 0, z = CAMERA, d = 0)."""
        (x0, x1), (z0, z1), (d0, d1) = x, z, d
        p = self.xy
        self.pen.polygon([p(x0, z0, d0), p(x0, z1, d0), p(x1, z1, d0), p(x1, z0, d0)], fill=inst)
        for xs in ((x0,) if x0 > 0 else ()) + ((x1,) if x1 < 0 else ()):
            self.pen.polygon([p(xs, z0, d0), p(xs, z1, d0), p(xs, z1, d1), p(xs, z0, d1)], fill=inst)
        for zs in ((z0,) if z0 > CAMERA else ()) + ((z1,) if z1 < CAMERA else ()):
            self.pen.polygon([p(x0, zs, d0), p(x1, zs, d0), p(x1, zs, d1), p(x0, zs, d1)], fill=inst)

    def bar(self, inst: int, x: tuple[float, float], z: tuple[float, float], d: float) -> None:
        """An upright rectangle facing the camera, at least one pixel wide."""
        (x0, y1), (x1, y0) = (round(v) for v in self.xy(x[0], z[0], d)), (round(v) for v in self.xy(x[1], z[1], d))
        self.pen.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), fill=inst)

    def blob(self, inst: int, x: tuple[float, float], z: tuple[float, float], d: float) -> None:
        (x0, y1), (x1, y0) = self.xy(x[0], z[0], d), self.xy(x[1], z[1], d)
        self.pen.ellipse((x0, y0, max(x0, x1), max(y0, y1)), fill=inst)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _car(s: Scene, x: float, d: float, size: float) -> None:
    half, length = 0.9 * size, 4.3 * size
    tyre, paint, glass = s.new("tyre"), s.new("paint"), s.new("glass")
    for side in (-1, 1):  # the rear wheels: the front ones hardly show at this size
        s.box(tyre, tuple(sorted((x + side * (half - 0.3), x + side * half))), (0.0, 0.6), (d + 0.5, d + 1.2))
    s.box(paint, (x - half, x + half), (0.25, 0.95 * size), (d, d + length))
    s.box(glass, (x - half + 0.15, x + half - 0.15), (0.95 * size, 1.45 * size), (d + 1.1 * size, d + 3.2 * size))


def _person(s: Scene, x: float, d: float, tall: float) -> None:
    trousers, shirt, skin = s.new("trousers"), s.new("shirt"), s.new("skin")
    step = s.rng.uniform(0.0, 0.15)
    s.bar(trousers, (x - 0.2 - step, x - 0.04), (0.0, 0.5 * tall), d)
    s.bar(trousers, (x + 0.04, x + 0.2 + step), (0.0, 0.5 * tall), d)
    s.blob(shirt, (x - 0.24, x + 0.24), (0.45 * tall, 0.85 * tall), d)
    s.blob(skin, (x - 0.11, x + 0.11), (0.83 * tall, tall), d)


def _pole(s: Scene, x: float, d: float, toward: float) -> None:
    pole, top = s.new("pole"), s.rng.uniform(4.0, 9.0)
    s.bar(pole, (x - 0.1, x + 0.1), (0.0, top), d)
    if s.rng.random() < 0.5:  # a street lamp's arm over the road
        s.bar(pole, tuple(sorted((x, x + toward * s.rng.uniform(1.0, 2.5)))), (top - 0.15, top), d)


def _tree(s: Scene, x: float, d: float) -> None:
    trunk, crown = s.new("trunk"), s.new("foliage")
    top = s.rng.uniform(2.0, 3.5)
    s.bar(trunk, (x - 0.15, x + 0.15), (0.0, top + 0.5), d)
    crowns = s.rng.uniform((0.8, -1.2, 0.5, -0.5), (2.0, 1.2, 1.8, 0.5), (s.rng.integers(3, 6), 4))
    for r, dx, up, dd in crowns.tolist():  # radius, offsets sideways, up (in radii) and in depth
        s.blob(crown, (x + dx - r, x + dx + r), (top + (up - 1) * r, top + (up + 1) * r), d + dd)


def _street(s: Scene, lay: Layout) -> tuple[float, float]:
    """Draw a whole street; returns the kerbs' x (left, right)."""
    rng, w, h = s.rng, s.w, s.h
    width = rng.uniform(*lay.road)
    left = -rng.uniform(0.2, 0.8) * width
    right = left + width
    walks = rng.uniform(*lay.sidewalk, size=2)
    s.pen.rectangle((0, 0, w, h), fill=s.new("sky"))
    x = -rng.uniform(0, 0.1) * w
    while x < w:  # the far city along the horizon
        step = rng.uniform(0.04, 0.2) * w
        top = s.horizon - rng.uniform(0.01, 0.12) * h
        s.pen.rectangle((x, top, x + step, s.horizon + 2), fill=s.new("foliage" if rng.random() < 0.25 else "skyline"))
        x += step
    s.ground(s.new("road"), left, right)
    s.ground(s.new("sidewalk"), left - walks[0] - 40, left)
    s.ground(s.new("sidewalk"), right, right + walks[1] + 40)
    for side, kerb, walk in ((-1, left, walks[0]), (1, right, walks[1])):
        segments, d = [], NEAR
        while d < 150:
            length = rng.uniform(8, 30)
            kind = int(np.searchsorted(np.cumsum(lay.frontage), rng.random()))
            segments.append((d, length, kind, kerb + side * (walk + rng.uniform(0, 1.5))))
            d += length
        for d, length, kind, plane in reversed(segments):  # far to near: near buildings hide far ones
            if kind == 0:
                storeys = rng.integers(*lay.storeys)
                s.box(s.new("facade", plane), tuple(sorted((plane, plane + side * 20))), (0, 3.2 * storeys + 1),
                      (d, d + length))
            elif kind == 1:
                hedge = s.new("foliage")
                s.box(hedge, tuple(sorted((plane, plane + side * 4))), (0, rng.uniform(0.8, 2.5)), (d, d + length))
                for at in rng.uniform(0, length, size=rng.integers(1, 4)):
                    _tree(s, plane + side * rng.uniform(1, 5), d + at)
    things = []
    for _ in range(rng.integers(*lay.cars)):
        parked = rng.random() < 0.4
        x = (left + 1.1 if rng.random() < 0.5 else right - 1.1) if parked else rng.uniform(left + 1.2, right - 1.2)
        things.append((_log_uniform(rng, 6, 70), _car, x, rng.uniform(*lay.car_size)))
    for _ in range(rng.integers(*lay.persons)):
        kerb, side, walk = (left, -1, walks[0]) if rng.random() < 0.5 else (right, 1, walks[1])
        x = kerb + side * rng.uniform(0.3, walk - 0.2)
        things.append((_log_uniform(rng, 3, 40), _person, x, rng.uniform(1.55, 1.9)))
    for _ in range(rng.integers(*lay.poles)):
        kerb, side = (left, -1) if rng.random() < 0.5 else (right, 1)
        things.append((_log_uniform(rng, 3, 80), _pole, kerb + side * 0.4, -side))
    for _ in range(rng.integers(*lay.trees)):
        kerb, side = (left, -1) if rng.random() < 0.5 else (right, 1)
        things.append((_log_uniform(rng, 4, 60), _tree, kerb + side * 1.0))
    for d, draw, *args in sorted(things, key=lambda t: -t[0]):
        draw(s, args[0], d, *args[1:])
    return left, right


@dataclass
class Scenes:
    """A batch of drawn streets: instance ids (N, H, W), each instance's material and wall plane
    (N, MAX_INSTANCES), and each camera (N, 5): vanishing x, horizon y, focal, left and right kerb."""

    ids: np.ndarray
    materials: np.ndarray
    planes: np.ndarray
    cameras: np.ndarray

    def per_pixel(self, values: np.ndarray) -> np.ndarray:
        """Per-instance values (N, MAX_INSTANCES, ...) -> each pixel's (N, H, W, ...)."""
        n = len(self.ids)
        at = self.ids + (np.arange(n, dtype=np.int64) * MAX_INSTANCES)[:, None, None]
        return np.take(values.reshape(n * MAX_INSTANCES, *values.shape[2:]), at, axis=0)

    def labels(self) -> np.ndarray:
        classes = np.array([CLASSES.index(m.cls) for m in MATERIALS.values()], dtype=np.uint8)
        return self.per_pixel(classes[self.materials])


def draw_scenes(n: int, w: int, h: int, layout: Layout, rng: np.random.Generator) -> Scenes:
    ids = np.empty((n, h, w), dtype=np.uint8)
    materials = np.zeros((n, MAX_INSTANCES), dtype=np.int64)
    planes = np.zeros((n, MAX_INSTANCES), dtype=np.float32)
    cameras = np.empty((n, 5), dtype=np.float32)
    for i in range(n):
        s = Scene(rng, layout, w, h)
        kerbs = _street(s, layout)
        ids[i] = np.asarray(s.ids)
        materials[i, : len(s.materials)] = s.materials
        planes[i, : len(s.planes)] = s.planes
        cameras[i] = (s.vx, s.horizon, s.f, *kerbs)
    return Scenes(ids, materials, planes, cameras)


def paint_sim(scenes: Scenes, rng: np.random.Generator) -> torch.Tensor:
    """Flat colours: each instance its material's colour plus jitter, each image a global tint,
    the sky lighter towards the horizon."""
    n, h, w = scenes.ids.shape
    base = np.array([m.colour for m in MATERIALS.values()], dtype=np.float32)[scenes.materials]
    jitter = np.array([m.jitter for m in MATERIALS.values()], dtype=np.float32)[scenes.materials]
    colour = base + jitter[..., None] * rng.uniform(-1, 1, base.shape).astype(np.float32)
    colour += rng.uniform(-12, 12, (n, 1, 3)).astype(np.float32)
    img = scenes.per_pixel(colour)
    rows = (np.arange(h, dtype=np.float32) - scenes.cameras[:, 1, None]) / h  # negative above the horizon
    sky = scenes.per_pixel(scenes.materials) == MATERIAL_NAMES.index("sky")
    img += (sky * (90 * rows[:, :, None]))[..., None] * np.array([1.0, 0.8, 0.3], dtype=np.float32)
    return torch.from_numpy(np.clip(img, 0, 255, out=img).round().astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


@lru_cache(maxsize=1)
def textures() -> tuple[tuple[str, ...], np.ndarray]:
    """Names and float32 (K, S, S, 3) texture squares in [0, 1]: scikit-image's bundled
    photographs (centre square, resized) and a procedural cloud field."""
    import skimage

    names, out = [], []
    for name, file in {**PHOTOS, **GREYS}.items():
        path = Path(skimage.data_dir) / file
        if path.is_file():
            img = Image.open(path).convert("RGB")
        else:
            import skimage.data

            img = getattr(skimage.data, name)()
            img = Image.fromarray(img[0] if isinstance(img, tuple) else img).convert("RGB")  # stereo: the left
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((TEXTURE_SIZE, TEXTURE_SIZE), Image.BILINEAR)
        names.append(name)
        out.append(np.asarray(img, dtype=np.float32) / 255)
    rng, clouds = np.random.default_rng(0), np.zeros((1, 1, TEXTURE_SIZE, TEXTURE_SIZE), dtype=np.float32)
    for cells, weight in ((4, 1.0), (8, 0.5), (16, 0.25), (32, 0.12)):
        grid = torch.from_numpy(rng.standard_normal((1, 1, cells, cells), dtype=np.float32))
        grid = torch.cat([grid, grid[..., :1]], -1)
        grid = torch.cat([grid, grid[..., :1, :]], -2)  # wraps around, so tiles hardly show seams
        size = (TEXTURE_SIZE + TEXTURE_SIZE // cells,) * 2
        field = F.interpolate(grid, size=size, mode="bicubic", align_corners=True)
        clouds += weight * field[..., :TEXTURE_SIZE, :TEXTURE_SIZE].numpy()
    clouds = (clouds - clouds.min()) / (clouds.max() - clouds.min())
    names.append("clouds")
    out.append(np.repeat(clouds[0, 0, :, :, None], 3, -1))
    return tuple(names), np.stack(out)


def _choices(scenes: Scenes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """streets-real's random draws for every instance, float32 (N, MAX_INSTANCES); the tint (..., 3)."""
    names, _ = textures()
    mats = scenes.materials
    out = {key: np.zeros(mats.shape, dtype=np.float32) for key in ("texture", "scale", "contrast", "u", "v")}
    out["tint"] = np.zeros(mats.shape + (3,), dtype=np.float32)
    for m, mat in enumerate(MATERIALS.values()):
        here = mats == m
        k = int(here.sum())
        out["texture"][here] = np.array([names.index(t) for t in mat.textures])[rng.integers(len(mat.textures), size=k)]
        out["tint"][here] = np.array(mat.tints)[rng.integers(len(mat.tints), size=k)] * rng.uniform(0.85, 1.15, (k, 3))
        out["scale"][here] = rng.uniform(*mat.scale, size=k)
        out["contrast"][here] = rng.uniform(*mat.contrast, size=k)
    out["u"], out["v"] = rng.uniform(0, TEXTURE_SIZE, (2,) + mats.shape)
    windows = rng.random(mats.shape) < 0.85
    out["storey"] = np.where(windows, rng.uniform(2.8, 3.6, mats.shape), np.inf)  # an infinite storey: no windows
    out["bay"] = rng.uniform(2.4, 4.0, mats.shape)
    return out


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)  # np.mod(x, 1), several times faster


def paint_real(scenes: Scenes, rng: np.random.Generator) -> torch.Tensor:
    """Textured colours, float (N, 3, H, W) in [0, 1]: each instance a texture of its material,
    mapped on the screen, on the road plane or on its wall in perspective; windows on facades,
    lane markings on roads, the sky deeper blue towards the zenith."""
    _, tex = textures()
    n, h, w = scenes.ids.shape
    draw, pixels = _choices(scenes, rng), scenes.per_pixel
    material = pixels(scenes.materials)
    mapping = np.array([("screen", "ground", "facade").index(m.mapping) for m in MATERIALS.values()])[material]
    vx, hz, f, left, right = (c[:, None, None] for c in scenes.cameras.T)
    ys = np.arange(h, dtype=np.float32)[:, None] - hz  # rows below the horizon
    dx = np.arange(w, dtype=np.float32) - vx
    depth_g = np.minimum(f * CAMERA / np.maximum(ys, 0.5), 300)  # the ground seen at each pixel
    x_g = dx * depth_g / f
    wall = mapping == 2
    depth_w = np.clip(f * pixels(scenes.planes) / np.where(np.abs(dx) < 0.5, np.copysign(0.5, dx), dx), 0.1, 300)
    height_w = CAMERA - ys * depth_w / f  # the point of the pixel's wall
    u = np.select([mapping == 1, wall], [x_g, depth_w], dx)
    v = np.select([mapping == 1, wall], [depth_g, -height_w], ys)
    scale = pixels(draw["scale"])
    u = (u * scale + pixels(draw["u"])).astype(np.int64) & (TEXTURE_SIZE - 1)
    v = (v * scale + pixels(draw["v"])).astype(np.int64) & (TEXTURE_SIZE - 1)
    texel = (pixels(draw["texture"]).astype(np.int64) * TEXTURE_SIZE + v) * TEXTURE_SIZE + u
    texel = np.take(tex.reshape(-1, 3), texel, axis=0)
    tint, contrast = draw["tint"], draw["contrast"][..., None]
    img = pixels(tint * (1 - contrast)) + pixels(tint * 2 * contrast) * texel
    glass = wall & (height_w > 2.2) & (_frac(height_w / pixels(draw["storey"])) > 0.35)
    glass &= _frac(depth_w / pixels(draw["bay"])) < 0.55
    img[glass] = img[glass] * 0.3 + np.float32(0.04)
    line = (np.abs(x_g - (left + right) / 2) < 0.08) & (_frac(depth_g / 9) < 0.4)
    line |= (np.abs(x_g - left - 0.3) < 0.08) | (np.abs(x_g - right + 0.3) < 0.08)
    line &= (material == MATERIAL_NAMES.index("road")) & (rng.random((n, 1, 1)) < 0.8)
    img[line] = 0.8
    img *= np.where(material == MATERIAL_NAMES.index("sky"), 1 + 0.7 * np.minimum(ys, 0) / h, 1)[..., None]
    return torch.from_numpy(img).permute(0, 3, 1, 2)


def camera(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A camera's look on float (N, 3, H, W) renderings in [0, 1]: blur, exposure, colour cast,
    gamma and sensor noise -> uint8."""
    n = len(img)
    taps = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-taps**2 / (2 * 0.8**2))
    kernel /= kernel.sum()
    blurred = F.conv2d(F.pad(img, (2, 2, 2, 2), mode="replicate"), (kernel[:, None] * kernel).expand(3, 1, 5, 5),
                       groups=3)
    amount = torch.from_numpy(rng.uniform(0.5, 1.0, (n, 1, 1, 1))).float()
    gain = torch.from_numpy(rng.uniform(0.75, 1.25, (n, 1, 1, 1)) * rng.uniform(0.92, 1.08, (n, 3, 1, 1))).float()
    gamma = torch.from_numpy(rng.uniform(0.8, 1.25, (n, 1, 1, 1))).float()
    img = ((img + amount * (blurred - img)).clamp(0, 1) * gain).clamp(0, 1) ** gamma
    noise = torch.from_numpy(rng.uniform(0.005, 0.025, (n, 1, 1, 1))).float() * torch.randn(
        img.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
    return (img + noise).mul_(255).round_().clamp_(0, 255).to(torch.uint8).contiguous()


def render(n: int, size: tuple[int, int], real: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n scenes at size (W, H): uint8 images (n, 3, H, W) and uint8 train ids (n, H, W)."""
    w, h = size
    rng = np.random.default_rng(seed)
    scenes = draw_scenes(n, w, h, REAL_LAYOUT if real else SIM_LAYOUT, rng)
    if real:
        images = torch.cat([camera(paint_real(part, rng), rng) for part in _chunks(scenes, 64)])
    else:
        images = paint_sim(scenes, rng)
    return images, torch.from_numpy(scenes.labels())


def _chunks(scenes: Scenes, size: int):
    for i in range(0, len(scenes.ids), size):
        yield Scenes(*(a[i : i + size] for a in (scenes.ids, scenes.materials, scenes.planes, scenes.cameras)))


def _size(name: str, image_size: int | None) -> tuple[int, int]:
    size = scaled(DEFAULT_SIZE, image_size, name)
    if size[1] < MIN_HEIGHT:
        raise DabenchError(f"{name}: --image-size is the image height, at least {MIN_HEIGHT} pixels (the width is "
                           f"twice that); got {image_size!r}. The default is {DEFAULT_SIZE[1]}.")
    return size


def _domain(name: str, arg: str | None, image_size: int | None, real: bool, seed: int) -> Domain:
    n, size = image_count(name, arg, DEFAULT_COUNT), _size(name, image_size)
    images, labels = render(n, size, real, seed)
    return Domain(name, SEGMENTATION, list(CLASSES), TensorImages(images, labels), None, size,
                  info={"images": n, "seed": seed, "generator": "procedural streets",
                        **({"textures": [*PHOTOS, *GREYS]} if real else {})}, colours={c: PALETTE[c] for c in CLASSES})


@plugin("streets-sim", task=SEGMENTATION, generated=True,
        description="procedural flat-shaded street scenes, 8 Cityscapes classes (simulation; streets-sim:N for N images, "
                    "default 600)")
def streets_sim(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """Synthetic source: procedurally drawn streets, flat colours, seed 0 (the same images every
    time). 600 images of 128x64 take about a second on one core: no cache."""
    return _domain("streets-sim", arg, image_size, real=False, seed=SIM_SEED)


@plugin("streets-real", task=SEGMENTATION, generated=True,
        description="procedural street scenes textured with photographs, 8 Cityscapes classes (real; streets-real:N, "
                    "default 600)")
def streets_real(arg: str | None = None, *, root: Path | None = None, image_size: int | None = None) -> Domain:
    """The 'real' target: streets of other statistics textured in perspective with scikit-image's
    photographs, camera blur, colour cast and noise, seed 1. No official test split."""
    return _domain("streets-real", arg, image_size, real=True, seed=REAL_SEED)
