"""Synthetic pedestrian crops for the demo dataset: identity in the person, style in the camera.

Each identity is a drawn person (:class:`Person`: clothing colours and pattern, build, bag,
hair and skin tone) and each camera its own style (:class:`CameraStyle`: background colour and
texture, colour tint, brightness, blur, noise, person scale). Images of one camera therefore
look alike whoever is in them, which is the camera bias CALR addresses: naive features group
images by camera, while the clothing still tells the identities apart.

The backgrounds are muted (saturation 0.15-0.3, texture amplitude 5-15%) and the clothes
saturated. With saturated backgrounds (0.35-0.8, 15-35%) the camera outweighed the person so
far that a ResNet-18 from random weights, trained on its own clusters, learned the cameras and
ended below its untrained mAP; with muted ones the camera bias remains (naive features still
group by camera, the tests check it) and training from random weights improves retrieval.

Everything here is pure: :func:`plan_demo` decides which images exist and :func:`draw_crop`
draws one as an array; ``pipeline demo-data`` writes them. Every random draw comes from a
generator seeded by ``(seed, purpose, ...)``, so one seed always gives the same dataset.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from pipeline.data.datasets import MARKET_FOLDERS
from pipeline.errors import PipelineError
from pipeline.settings import flag_violations, setting

PATTERNS = ("plain", "stripes", "checks")
TEXTURES = ("gradient", "stripes", "tiles", "speckle")
HAIR = ((0.08, 0.06, 0.05), (0.30, 0.18, 0.10), (0.75, 0.60, 0.35), (0.55, 0.55, 0.55))
SKIN = ((0.96, 0.80, 0.69), (0.87, 0.67, 0.52), (0.68, 0.48, 0.34), (0.42, 0.28, 0.20))
CAMERAS_PER_IDENTITY = (2, 4)  # inclusive range
IMAGES_PER_CAMERA = (2, 4)  # inclusive range
# seed purposes, so that each kind of random draw has its own stream
_PLAN, _PEOPLE, _CAMERAS, _IMAGES = range(4)

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class DemoConfig:
    """The generated demo dataset (dataset name ``demo``): its size and the seed that draws it."""

    seed: int = setting(0, "fixes every random choice of the drawn dataset (part of the data)")
    identities: int = setting(120, "number of people", minimum=2)
    cameras: int = setting(6, "number of cameras", minimum=2)
    height: int = setting(128, "crop height (px)", minimum=32)
    width: int = setting(64, "crop width (px)", minimum=16)

    def check(self) -> None:
        """Fail on values that cannot make a dataset with cross-camera queries."""
        problems = flag_violations(self)
        if self.identities > 9999 or self.cameras > 9:
            problems.append(
                "Market-1501 file names hold at most 9999 identities and 9 cameras "
                f"(got --identities {self.identities}, --cameras {self.cameras})"
            )
        if problems:
            raise PipelineError("demo data: " + "; ".join(problems))


@dataclass(frozen=True)
class Person:
    """What makes an identity recognisable in every camera."""

    top: Colour
    bottom: Colour
    accent: Colour  # second colour of a striped or checked top
    pattern: str  # one of PATTERNS
    hair: Colour
    skin: Colour
    height: float  # body height as a fraction of the crop height
    width: float  # shoulder width as a fraction of the crop width
    bag: Colour | None  # colour of a shoulder bag, or None without one


@dataclass(frozen=True)
class CameraStyle:
    """What every image of a camera shares, whoever is in it."""

    background: Colour
    texture: str  # one of TEXTURES
    period: float  # texture period in pixels
    contrast: float  # texture amplitude relative to the background colour
    tint: Colour  # per-channel gain
    brightness: float
    blur: float  # Gaussian sigma in pixels
    noise: float  # Gaussian noise sigma on the 0-255 scale
    scale: float  # person size relative to the crop


def _hsv(h: float, s: float, v: float) -> Colour:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def sample_person(rng: np.random.Generator) -> Person:
    """A random identity with saturated, clearly distinct clothing colours."""
    top_hue = rng.random()
    if rng.random() < 0.4:  # dark, nearly grey trousers
        bottom = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.3))
    else:
        bottom = _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.35, 0.9))
    has_bag = rng.random() < 0.4
    return Person(
        top=_hsv(top_hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)),
        bottom=bottom,
        accent=_hsv(top_hue + rng.uniform(0.3, 0.7), rng.uniform(0.0, 0.8), rng.uniform(0.7, 1.0)),
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        hair=HAIR[rng.integers(len(HAIR))],
        skin=SKIN[rng.integers(len(SKIN))],
        height=rng.uniform(0.78, 0.94),
        width=rng.uniform(0.34, 0.5),
        bag=_hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.8)) if has_bag else None,
    )


def sample_camera(rng: np.random.Generator, position: float, texture: str) -> CameraStyle:
    """A camera style; ``position`` in [0, 1) spreads background hues around the colour wheel.

    Muted backgrounds and faint textures (see the module docstring for why).
    """
    return CameraStyle(
        background=_hsv(
            position + rng.uniform(-0.04, 0.04), rng.uniform(0.15, 0.3), rng.uniform(0.4, 0.65)
        ),
        texture=texture,
        period=rng.uniform(6.0, 16.0),
        contrast=rng.uniform(0.05, 0.15),
        tint=tuple(rng.uniform(0.9, 1.1, size=3).tolist()),
        brightness=rng.uniform(0.85, 1.15),
        blur=rng.uniform(0.0, 1.5),
        noise=rng.uniform(2.0, 10.0),
        scale=rng.uniform(0.8, 1.0),
    )


def demo_people(config: DemoConfig) -> dict[int, Person]:
    """pid (1..identities) -> its person."""
    rng = np.random.default_rng([config.seed, _PEOPLE])
    return {pid: sample_person(rng) for pid in range(1, config.identities + 1)}


def demo_cameras(config: DemoConfig) -> dict[int, CameraStyle]:
    """camid (1..cameras) -> its style; background hues and textures differ between cameras."""
    rng = np.random.default_rng([config.seed, _CAMERAS])
    textures = rng.permutation(np.resize(TEXTURES, config.cameras))
    hues = rng.permutation(config.cameras) / config.cameras
    return {
        camid: sample_camera(rng, hues[camid - 1], str(textures[camid - 1]))
        for camid in range(1, config.cameras + 1)
    }


def plan_demo(config: DemoConfig) -> pd.DataFrame:
    """The images of the demo dataset, one row each: ``pid``, ``camid``, ``split``, ``name``.

    Each identity appears in 2-4 cameras with 2-4 images per camera. Half the identities
    (seeded) form the training split; each of the others gives one query image in its first
    camera and the rest of its images to the gallery, so every query has a match in another
    camera. ``name`` is the file path in Market-1501 layout, e.g.
    ``query/0007_c3s1_000012_00.jpg``.
    """
    config.check()
    rng = np.random.default_rng([config.seed, _PLAN])
    pids = np.arange(1, config.identities + 1)
    train = set(rng.permutation(pids)[: config.identities // 2].tolist())
    rows = []
    for pid in pids.tolist():
        n_cameras = rng.integers(CAMERAS_PER_IDENTITY[0], CAMERAS_PER_IDENTITY[1] + 1)
        cameras = np.sort(
            rng.choice(
                np.arange(1, config.cameras + 1), size=min(n_cameras, config.cameras), replace=False
            )
        )
        for position, camid in enumerate(cameras.tolist()):
            n_images = rng.integers(IMAGES_PER_CAMERA[0], IMAGES_PER_CAMERA[1] + 1)
            for shot in range(n_images):
                if pid in train:
                    split = "train"
                else:
                    split = "query" if position == 0 and shot == 0 else "gallery"
                rows.append((pid, camid, split))
    plan = pd.DataFrame(rows, columns=["pid", "camid", "split"])
    frame = plan.groupby("camid").cumcount() + 1
    folders = plan["split"].map(MARKET_FOLDERS)
    plan["name"] = [
        f"{folder}/{pid:04d}_c{camid}s1_{25 * f:06d}_00.jpg"
        for folder, pid, camid, f in zip(folders, plan["pid"], plan["camid"], frame, strict=True)
    ]
    return plan


def _texture(
    style: CameraStyle, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The camera's background texture in [-1, 1], shifted at random per image."""
    dy, dx = rng.uniform(0, style.period, size=2)
    y, x = (yy + dy) / style.period, (xx + dx) / style.period
    if style.texture == "gradient":
        return np.clip(2.0 * yy / yy.max() - 1.0 + 0.3 * np.sin(np.pi * x / 4), -1, 1)
    if style.texture == "stripes":
        return np.sin(2 * np.pi * (x + y))
    if style.texture == "tiles":
        return np.sign(np.sin(np.pi * x) * np.sin(np.pi * y))
    # speckle: random blobs about one period across
    blobs = rng.uniform(-1, 1, size=(int(y.max()) + 1, int(x.max()) + 1))
    return gaussian_filter(blobs[y.astype(int), x.astype(int)], sigma=style.period / 4)


def draw_crop(
    person: Person, style: CameraStyle, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """One pedestrian crop, (height, width, 3) uint8, with per-image pose and position jitter."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    background = np.asarray(style.background)
    canvas = background * (1.0 + style.contrast * _texture(style, yy, xx, rng))[..., None]
    # body geometry in pixels; the feet stand near the bottom of the crop
    body = height * person.height * style.scale * rng.uniform(0.96, 1.04)
    feet = height * rng.uniform(0.94, 0.99)
    top = feet - body
    cx = width / 2 + rng.uniform(-0.06, 0.06) * width
    shoulder = width * person.width * style.scale / 2
    hip = 0.8 * shoulder
    # mirror the person half the time (walking left or right), which moves the bag
    x = (xx - cx) * (1 if rng.random() < 0.5 else -1)
    floor = yy > feet - 0.02 * height
    canvas[floor] *= 0.8

    head_r = 0.075 * body
    head_cy = top + head_r
    neck, waist = top + 2 * head_r, top + 0.55 * body
    # legs, with a random stride
    stride = rng.uniform(0.0, 0.35) * hip
    leg_w = 0.42 * hip
    for side in (-1, 1):
        leg_x = side * (0.5 * hip) + side * stride * (yy - waist) / body
        leg = (np.abs(x - leg_x) < leg_w) & (yy >= waist) & (yy < feet)
        canvas[leg] = person.bottom
        canvas[leg & (yy > feet - 0.04 * body)] = (0.1, 0.1, 0.1)
    # torso, tapering from shoulders to hips, with the identity's pattern
    half = shoulder + (hip - shoulder) * (yy - neck) / (waist - neck)
    torso = (np.abs(x) < half) & (yy >= neck) & (yy < waist + 0.03 * body)
    band = 0.07 * body
    accent = {
        "plain": np.zeros_like(torso),
        "stripes": ((yy - neck) // band) % 2 == 1,
        "checks": (((yy - neck) // band) + ((x + shoulder) // band)) % 2 == 1,
    }[person.pattern]
    canvas[torso] = person.top
    canvas[torso & accent] = person.accent
    # arms swing by a random amount
    swing = rng.uniform(-0.15, 0.15) * body
    for side in (-1, 1):
        arm_x = side * (shoulder + 0.12 * shoulder) + side * swing * (yy - neck) / body
        arm = (np.abs(x - arm_x) < 0.2 * shoulder) & (yy >= neck) & (yy < waist + 0.02 * body)
        canvas[arm] = person.top
        canvas[arm & (yy >= waist - 0.05 * body)] = person.skin
    if person.bag is not None:
        bag = (np.abs(x - 1.3 * shoulder) < 0.35 * shoulder) & (np.abs(yy - waist) < 0.09 * body)
        strap = np.abs((x + 0.6 * shoulder) - (yy - neck) * 1.9 * shoulder / (waist - neck)) < 1.0
        canvas[bag | (strap & (yy >= neck) & (yy < waist))] = person.bag
    head = (x / (0.85 * head_r)) ** 2 + ((yy - head_cy) / head_r) ** 2 < 1
    canvas[head] = person.skin
    canvas[head & (yy < head_cy - 0.2 * head_r)] = person.hair

    canvas = canvas * np.asarray(style.tint) * style.brightness
    if style.blur > 0:
        canvas = gaussian_filter(canvas, sigma=(style.blur, style.blur, 0))
    canvas = canvas * 255 + rng.normal(0, style.noise, size=canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def generate_demo(config: DemoConfig):
    """Yield ``(name, image)`` for every image of :func:`plan_demo`, drawn deterministically."""
    people, cameras = demo_people(config), demo_cameras(config)
    plan = plan_demo(config)
    for row, (pid, camid, name) in enumerate(
        zip(plan["pid"], plan["camid"], plan["name"], strict=True)
    ):
        rng = np.random.default_rng([config.seed, _IMAGES, row])
        yield name, draw_crop(people[pid], cameras[camid], config.height, config.width, rng)
