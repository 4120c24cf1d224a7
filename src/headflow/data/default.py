"""The embedded default dataset: 16 synthetic object classes drawn with PIL under crossed appearance factors.

Every image is 96x96 RGB and is a pure function of ``(seed, index, stream)``: its random generator is
``numpy.random.default_rng([stream, seed, index])``. The analysis stream (``stream=0``, used by
:func:`load_dataset("default") <headflow.data.load_dataset>`) and the training stream (``stream=1``, used
by :mod:`headflow.zoo.train`) therefore never share an image, whatever the seeds.

Design (analysis stream): example ``i`` has class ``CLASSES[i % 16]`` and style ``STYLES[(i // 16) % 3]``,
so every ``n`` that is a multiple of 48 is exactly balanced over (class, style). Palette, size,
position, background, contrast and clutter are balanced the same way over blocks of 48 (each cycles
through its levels with the block index, offset by the class), the remaining details (exact colours,
rotation, jitter, clutter items) come from the example's own generator.

Contrast control: object and background always come from opposite lightness families (light object
on dark background or dark object on light background), whatever their hues. Without it a small ViT
trained from scratch hardly learns shape (see ``/work/shared/notes/tiny-llava-trial.md``).

Two worlds
----------
**World 1** (:func:`render_example`) is one object per image, the only task naming its class.

**World 2** (:func:`render_scene`, ``DefaultDataset(world=2)``) is a scene: a **main object**, the largest
(drawing radius 15-27 px; as COCO's main object is chosen by area), plus zero to two **distractors** of
other, distinct classes (radius 6-8.5 px, random colour and style), placed so that no two bounding circles
overlap, over the same background, contrast and clutter factors. Every object has its own pixel mask
(:class:`SceneObject`); ``Example.mask`` is the main object's (what the object/background token-flow
analysis uses). The main object's factors are *answerable*: ``colour`` (red, yellow, green, blue, purple:
narrow hue bands), ``size`` (small, medium, large), ``position`` (centre, left, right, top, bottom) and
``distractors`` (none, one, two: the object count is one more). Its crossed design is world 1's: example
``i`` has class ``CLASSES[i % 16]`` and style ``(i // 16) % 3``; the other factors cycle over blocks of 48,
offset by class, so (class x style) is exactly balanced for every multiple of 48 and the other factors
are nearly balanced and never tied to a class.

Questions (:data:`QUESTION_TYPES`, :data:`PHRASINGS`, :func:`question_for`): the same image answers six
question types with six different one-word answers: the main object's ``class`` (the paper's task; the
first phrasing is the canonical analysis question), ``colour``, ``position``, ``size``, the ``count`` of
objects (one, two, three) and ``exists`` ("Is there a key in the image?": yes/no; every scene draws a
probe class that is present half of the time). Each type has three or four training phrasings and one
more, the last, that training never uses. :func:`caption` describes a scene in one line (the text
of language-model pretraining and vision-language alignment).

The world that :func:`load_dataset("default") <headflow.data.load_dataset>` renders is
:data:`DEFAULT_WORLD`: the one the shipped default model was trained on.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from headflow.data.base import Dataset, Example

__all__ = [
    "CLASSES",
    "FACTORS",
    "IMAGE_SIZE",
    "DefaultDataset",
    "render_example",
    "ANALYSIS_STREAM",
    "TRAIN_STREAM",
    "WORLDS",
    "DEFAULT_WORLD",
    "SCENE_FACTORS",
    "COLOURS",
    "POSITIONS",
    "SIZES",
    "COUNTS",
    "QUESTION_TYPES",
    "PHRASINGS",
    "CANONICAL_QUESTION",
    "SceneObject",
    "Scene",
    "render_scene",
    "question_for",
    "caption",
]

IMAGE_SIZE = 96
_SS = 2  # supersampling factor for anti-aliased drawing
ANALYSIS_STREAM = 0
TRAIN_STREAM = 1

CLASSES: list[str] = [
    "circle", "square", "triangle", "star", "heart", "cross", "arrow", "moon",
    "house", "tree", "car", "fish", "umbrella", "flower", "diamond", "key",
]  # fmt: skip

FACTORS: dict[str, list[str]] = {
    "style": ["filled", "outline", "textured"],
    "palette": ["warm", "green", "cool", "purple"],
    "size": ["small", "medium", "large"],
    "position": ["center", "top-left", "top-right", "bottom-left", "bottom-right"],
    "background": ["plain", "gradient"],
    "contrast": ["light-on-dark", "dark-on-light"],
    "clutter": ["none", "low", "high"],
}

_PALETTE_HUES: dict[str, tuple[float, float]] = {  # hue ranges in degrees
    "warm": (0.0, 55.0),
    "green": (85.0, 150.0),
    "cool": (185.0, 240.0),
    "purple": (265.0, 320.0),
}
_SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (20.0, 25.0), "medium": (26.0, 32.0), "large": (33.0, 38.0)}
_CLUTTER_COUNT: dict[str, tuple[int, int]] = {"none": (0, 0), "low": (1, 2), "high": (3, 5)}
_MAX_ROTATION_DEG = 15.0

Polygon = list[tuple[float, float]]


# ----------------------------------------------------------------------------------------------
# Shapes, as unions of polygons in a unit frame (x right, y down, object roughly within [-1, 1]^2)
# ----------------------------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40, a0: float = 0.0, a1: float = 360.0) -> Polygon:
    """Points on an ellipse arc from angle ``a0`` to ``a1`` (degrees)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(a0, a1, n, endpoint=(a1 - a0) % 360 != 0)
    ]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _star(points: int = 5, inner: float = 0.42) -> Polygon:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -90.0 + 180.0 * k / points
        out.append((r * math.cos(math.radians(a)), r * math.sin(math.radians(a)) + 0.08))
    return out


def _heart() -> Polygon:
    pts = []
    for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 - 0.1))
    return pts


def _moon() -> Polygon:
    # outer unit circle minus a circle of radius 0.85 centred at (0.45, 0); the arcs meet at x = 0.5333
    outer = _ellipse(0.0, 0.0, 1.0, 1.0, 36, 57.8, 302.2)
    inner = _ellipse(0.45, 0.0, 0.85, 0.85, 30, 275.6, 84.4)
    return [(x + 0.2, y) for x, y in outer + inner]


def _shape_polygons(label: str) -> list[Polygon]:
    """Polygons (unit frame) whose union draws ``label``."""
    if label == "circle":
        return [_ellipse(0, 0, 1, 1, 48)]
    if label == "square":
        return [_rect(-0.82, -0.82, 0.82, 0.82)]
    if label == "triangle":
        return [[(0.0, -0.95), (0.95, 0.75), (-0.95, 0.75)]]
    if label == "star":
        return [_star()]
    if label == "heart":
        return [_heart()]
    if label == "cross":
        w = 0.3
        return [[(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]]
    if label == "arrow":
        return [[(-1, -0.22), (0.2, -0.22), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.22), (-1, 0.22)]]
    if label == "moon":
        return [_moon()]
    if label == "house":
        return [[(-0.75, 1), (-0.75, -0.1), (0, -0.95), (0.75, -0.1), (0.75, 1), (0.18, 1), (0.18, 0.4), (-0.18, 0.4), (-0.18, 1)]]
    if label == "tree":
        return [[(0, -1), (0.8, 0.45), (-0.8, 0.45)], _rect(-0.16, 0.4, 0.16, 1.0)]
    if label == "car":
        return [
            _rect(-1, -0.05, 1, 0.45),
            [(-0.55, -0.05), (-0.35, -0.5), (0.35, -0.5), (0.6, -0.05)],
            _ellipse(-0.55, 0.5, 0.24, 0.24, 20),
            _ellipse(0.55, 0.5, 0.24, 0.24, 20),
        ]
    if label == "fish":
        return [_ellipse(-0.15, 0, 0.75, 0.45, 40), [(0.45, 0), (1, -0.5), (1, 0.5)]]
    if label == "umbrella":
        canopy = _ellipse(0, 0, 1, 0.75, 30, 180, 360) + [(1, 0.02), (-1, 0.02)]
        return [canopy, _rect(-0.07, 0, 0.07, 0.85), _rect(-0.35, 0.78, 0.07, 0.92), _rect(-0.35, 0.6, -0.23, 0.92)]
    if label == "flower":
        petals = [_ellipse(0.55 * math.cos(a), 0.55 * math.sin(a), 0.42, 0.42, 24) for a in np.linspace(0, 2 * math.pi, 5, endpoint=False) - math.pi / 2]
        return petals + [_ellipse(0, 0, 0.35, 0.35, 24)]
    if label == "diamond":
        return [[(0, -1), (0.62, 0), (0, 1), (-0.62, 0)]]
    if label == "key":
        return [
            _ellipse(-0.6, 0, 0.4, 0.4, 32),
            _rect(-0.25, -0.1, 1.0, 0.1),
            _rect(0.55, 0.1, 0.7, 0.4),
            _rect(0.82, 0.1, 0.97, 0.32),
        ]
    raise ValueError(f"Unknown class {label!r}; valid classes: {', '.join(CLASSES)}.")


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    label: str
    factors: dict[str, str]


def _hls_rgb(h_deg: float, lightness: float, sat: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb((h_deg % 360.0) / 360.0, lightness, sat)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _colours(rng: np.random.Generator, palette: str, contrast: str) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """Object colour, texture colour and two background colours (opposite lightness family)."""
    h0, h1 = _PALETTE_HUES[palette]
    hue = rng.uniform(h0, h1)
    sat = rng.uniform(0.55, 1.0)
    light_obj = contrast == "light-on-dark"
    obj_l = rng.uniform(0.62, 0.78) if light_obj else rng.uniform(0.2, 0.36)
    tex_l = obj_l + (0.15 if light_obj else -0.12)
    bg_l = (rng.uniform(0.03, 0.16), rng.uniform(0.03, 0.16)) if light_obj else (rng.uniform(0.84, 0.97), rng.uniform(0.84, 0.97))
    bg_h = rng.uniform(0, 360, size=2)
    bg_s = rng.uniform(0.0, 0.45, size=2)
    obj = _hls_rgb(hue, obj_l, sat)
    tex = _hls_rgb(hue + rng.uniform(-20, 20), float(np.clip(tex_l, 0.05, 0.92)), sat * 0.7)
    bg_a = _hls_rgb(bg_h[0], bg_l[0], bg_s[0])
    bg_b = _hls_rgb(bg_h[1], bg_l[1], bg_s[1])
    return obj, tex, bg_a, bg_b


def _background(rng: np.random.Generator, kind: str, a: tuple[int, int, int], b: tuple[int, int, int], size: int) -> Image.Image:
    if kind == "plain":
        return Image.new("RGB", (size, size), a)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    t = np.clip(xx * math.cos(angle) + yy * math.sin(angle) + 0.5, 0.0, 1.0)[..., None]
    arr = (1 - t) * np.asarray(a, np.float32) + t * np.asarray(b, np.float32)
    return Image.fromarray(arr.round().astype(np.uint8), "RGB")


def _transform(polys: list[Polygon], cx: float, cy: float, radius: float, rot_deg: float) -> list[Polygon]:
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    return [[(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in p] for p in polys]


def _silhouette(polys: list[Polygon], size: int) -> Image.Image:
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    for p in polys:
        d.polygon(p, fill=255)
    return im


def _outline(polys: list[Polygon], size: int, width: int) -> Image.Image:
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    for p in polys:
        d.polygon(p, outline=255, width=width)
    return im


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.uniform(0, math.pi)
    period = 7.0 * _SS
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(angle) + yy * math.sin(angle) + rng.uniform(0, period)
    return (u % period) < period * 0.45


def _draw_clutter(rng: np.random.Generator, canvas: Image.Image, count: int, colour_l: bool) -> None:
    d = ImageDraw.Draw(canvas)
    size = canvas.size[0]
    for _ in range(count):
        hue = rng.uniform(0, 360)
        light = rng.uniform(0.6, 0.8) if colour_l else rng.uniform(0.2, 0.38)
        col = _hls_rgb(hue, light, rng.uniform(0.3, 1.0))
        kind = rng.integers(3)
        x, y = rng.uniform(0.05, 0.95, size=2) * size
        if kind == 0:  # dot
            r = rng.uniform(1.5, 3.5) * _SS
            d.ellipse([x - r, y - r, x + r, y + r], fill=col)
        elif kind == 1:  # line segment
            a = rng.uniform(0, 2 * math.pi)
            ln = rng.uniform(6, 14) * _SS
            d.line([x, y, x + ln * math.cos(a), y + ln * math.sin(a)], fill=col, width=int(rng.integers(1, 3)) * _SS)
        else:  # small ring
            r = rng.uniform(2.5, 5.0) * _SS
            d.ellipse([x - r, y - r, x + r, y + r], outline=col, width=_SS)


def _pick_factors(rng: np.random.Generator, index: int, crossed: bool) -> tuple[str, dict[str, str]]:
    """Class and factor levels of example ``index``."""
    n_cls = len(CLASSES)
    label = CLASSES[index % n_cls]
    block = index // (n_cls * len(FACTORS["style"]))
    factors: dict[str, str] = {}
    if crossed:
        factors["style"] = FACTORS["style"][(index // n_cls) % 3]
        # cycle the other factors over blocks of 48, offset by class so that no factor is tied to a class
        offset = index % n_cls + (index // n_cls) % 3
        for k, name in enumerate(["palette", "size", "position", "background", "contrast", "clutter"]):
            levels = FACTORS[name]
            factors[name] = levels[(block + offset * (k + 1)) % len(levels)]
    else:
        for name, levels in FACTORS.items():
            factors[name] = levels[int(rng.integers(len(levels)))]
    return label, dict(sorted(factors.items()))


def render_example(seed: int, index: int, stream: int = ANALYSIS_STREAM) -> tuple[str, dict[str, str], np.ndarray, np.ndarray]:
    """Render example ``index`` of the generator with ``seed`` on ``stream``.

    Parameters
    ----------
    seed : int
        Dataset seed (non-negative).
    index : int
        Example index (non-negative).
    stream : int, default 0
        ``0`` (analysis: crossed, balanced design) or ``1`` (training: factors drawn at random).

    Returns
    -------
    label : str
        Class name.
    factors : dict of str to str
        Appearance factor levels.
    image : numpy.ndarray
        ``uint8`` array of shape ``(96, 96, 3)``.
    mask : numpy.ndarray
        ``bool`` array of shape ``(96, 96)``, ``True`` on the object's own pixels.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative. Got seed={seed}, index={index} instead.")
    rng = np.random.default_rng([stream, seed, index])
    label, factors = _pick_factors(rng, index, crossed=stream == ANALYSIS_STREAM)
    big = IMAGE_SIZE * _SS
    obj, tex, bg_a, bg_b = _colours(rng, factors["palette"], factors["contrast"])
    canvas = _background(rng, factors["background"], bg_a, bg_b, big)
    n_clutter = int(rng.integers(_CLUTTER_COUNT[factors["clutter"]][0], _CLUTTER_COUNT[factors["clutter"]][1] + 1))
    _draw_clutter(rng, canvas, n_clutter, colour_l=factors["contrast"] == "light-on-dark")

    radius = rng.uniform(*_SIZE_RADIUS[factors["size"]])
    free = IMAGE_SIZE / 2 - radius - 3.0
    dx = {"center": 0.0, "top-left": -1.0, "top-right": 1.0, "bottom-left": -1.0, "bottom-right": 1.0}[factors["position"]]
    dy = {"center": 0.0, "top-left": -1.0, "top-right": -1.0, "bottom-left": 1.0, "bottom-right": 1.0}[factors["position"]]
    jitter = rng.uniform(-2.0, 2.0, size=2)
    cx = (IMAGE_SIZE / 2 + dx * max(free, 0.0) * 0.9 + jitter[0]) * _SS
    cy = (IMAGE_SIZE / 2 + dy * max(free, 0.0) * 0.9 + jitter[1]) * _SS
    polys = _transform(_shape_polygons(label), cx, cy, radius * _SS, rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))

    if factors["style"] == "outline":
        shape = _outline(polys, big, width=int(round(rng.uniform(2.5, 3.5) * _SS)))
    else:
        shape = _silhouette(polys, big)
    fill = Image.new("RGB", (big, big), obj)
    if factors["style"] == "textured":
        arr = np.asarray(fill).copy()
        arr[_stripes(rng, big)] = tex
        fill = Image.fromarray(arr, "RGB")
    canvas.paste(fill, (0, 0), shape)

    image = np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.uint8)
    mask = np.asarray(shape.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)) >= 128
    return label, factors, image, mask


# ----------------------------------------------------------------------------------------------
# World 2: a main object, distractors, per-object masks, and questions whose answers differ
# ----------------------------------------------------------------------------------------------

WORLDS: tuple[int, ...] = (1, 2)
#: The world ``load_dataset("default")`` renders: the one the shipped default model was trained on.
DEFAULT_WORLD = 2

COLOURS: list[str] = ["red", "yellow", "green", "blue", "purple"]
POSITIONS: list[str] = ["centre", "left", "right", "top", "bottom"]
SIZES: list[str] = ["small", "medium", "large"]
COUNTS: list[str] = ["one", "two", "three"]

SCENE_FACTORS: dict[str, list[str]] = {
    "style": ["filled", "outline", "textured"],
    "colour": COLOURS,
    "size": SIZES,
    "position": POSITIONS,
    "background": ["plain", "gradient"],
    "contrast": ["light-on-dark", "dark-on-light"],
    "clutter": ["none", "low", "high"],
    "distractors": ["none", "one", "two"],
}

_COLOUR_HUES: dict[str, tuple[float, float]] = {  # degrees; narrow enough that the name is unambiguous
    "red": (-10.0, 8.0),
    "yellow": (48.0, 60.0),
    "green": (105.0, 140.0),
    "blue": (210.0, 235.0),
    "purple": (272.0, 300.0),
}
_SCENE_RADIUS: dict[str, tuple[float, float]] = {"small": (15.0, 18.0), "medium": (19.5, 22.5), "large": (24.0, 27.0)}
_DISTRACTOR_RADIUS = (6.0, 8.5)  # at most 0.57 x any main object: the main object is clearly the largest
_BOUND = 1.17  # radius of a shape's bounding circle (any rotation) in units of its drawing radius
_N_DISTRACTORS = {"none": 0, "one": 1, "two": 2}

#: Question types, in a fixed order; ``"class"`` is the paper's task and the default analysis question.
QUESTION_TYPES: tuple[str, ...] = ("class", "colour", "position", "size", "count", "exists")

#: Phrasings per question type: the first ``len - 1`` are used in training, the last is held out.
#: ``{a} {x}`` in an ``exists`` phrasing is an article and a class word ("an arrow", "a key").
PHRASINGS: dict[str, list[str]] = {
    "class": [
        "What is the main object in the image? Answer in one word.",
        "Which object is shown?",
        "Name the object in the picture.",
        "What shape is in this image? Answer with a single word.",
        "Which shape is the main object?",
    ],
    "colour": [
        "What colour is the main object?",
        "What is the colour of the main object? Answer in one word.",
        "Which colour does the main object have?",
        "Name the colour of the main object.",
    ],
    "position": [
        "Where is the main object?",
        "Where is the main object in the image? Answer in one word.",
        "In which part of the picture is the main object?",
        "Where in the picture is the main object?",
    ],
    "size": [
        "What size is the main object?",
        "How big is the main object?",
        "Is the main object small, medium or large?",
        "What is the size of the main object? Answer in one word.",
    ],
    "count": [
        "How many objects are there?",
        "How many objects are in the image?",
        "Count the objects in the picture.",
        "How many objects can you see?",
    ],
    "exists": [
        "Is there {a} {x} in the image?",
        "Is there {a} {x}?",
        "Do you see {a} {x} in the picture?",
        "Does the image show {a} {x}?",
    ],
}
CANONICAL_QUESTION = PHRASINGS["class"][0]

#: Every word a question of each type may be answered with.
ANSWER_WORDS: dict[str, list[str]] = {
    "class": list(CLASSES), "colour": COLOURS, "position": POSITIONS, "size": SIZES, "count": COUNTS,
    "exists": ["yes", "no"],
}


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: class, colour word, style, drawing radius, centre (pixels) and pixel mask."""

    label: str
    colour: str
    style: str
    radius: float
    centre: tuple[float, float]
    mask: np.ndarray


@dataclass(frozen=True)
class Scene:
    """A rendered world-2 image: the main object (``objects[0]``, the largest), its distractors and factors."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    factors: dict[str, str]
    probe: str  # the class word the scene's own "is there a X?" question asks about

    @property
    def label(self) -> str:
        return self.objects[0].label

    @property
    def mask(self) -> np.ndarray:
        return self.objects[0].mask

    def answer(self, qtype: str, probe: str | None = None) -> str:
        """The one-word answer to a question of type ``qtype`` (``probe``: the class an ``exists`` question names)."""
        main = self.objects[0]
        if qtype == "class":
            return main.label
        if qtype == "colour":
            return main.colour
        if qtype == "position":
            return self.factors["position"]
        if qtype == "size":
            return self.factors["size"]
        if qtype == "count":
            return COUNTS[len(self.objects) - 1]
        if qtype == "exists":
            x = self.probe if probe is None else probe
            return "yes" if any(o.label == x for o in self.objects) else "no"
        raise ValueError(f"Unknown question type {qtype!r}; valid types: {', '.join(QUESTION_TYPES)}.")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def question_for(scene: Scene, qtype: str, phrasing: int = 0, probe: str | None = None) -> tuple[str, str]:
    """``(question, answer)`` for ``scene``: phrasing ``phrasing`` of type ``qtype`` (the last one is held out)."""
    if qtype not in PHRASINGS:
        raise ValueError(f"Unknown question type {qtype!r}; valid types: {', '.join(QUESTION_TYPES)}.")
    options = PHRASINGS[qtype]
    if not 0 <= phrasing < len(options):
        raise ValueError(f"Question type {qtype!r} has phrasings 0..{len(options) - 1}. Got {phrasing} instead.")
    x = scene.probe if probe is None else probe
    text = options[phrasing].format(a=_article(x), x=x) if qtype == "exists" else options[phrasing]
    return text, scene.answer(qtype, x)


def caption(scene: Scene) -> str:
    """A one-line description: ``"three objects : a large red star on the left , a blue key , a green moon ."``."""
    main = scene.objects[0]
    pos = "in the centre" if scene.factors["position"] == "centre" else f"on the {scene.factors['position']}"
    parts = [f"{_article(scene.factors['size'])} {scene.factors['size']} {main.colour} {main.label} {pos}"]
    parts += [f"{_article(o.colour)} {o.colour} {o.label}" for o in scene.objects[1:]]
    n = len(scene.objects)
    return f"{COUNTS[n - 1]} object{'s' if n > 1 else ''} : " + " , ".join(parts) + " ."


def _pick_scene_factors(rng: np.random.Generator, index: int, crossed: bool) -> tuple[str, dict[str, str]]:
    """Main class and factor levels of world-2 example ``index`` (crossed design as in world 1)."""
    n_cls = len(CLASSES)
    label = CLASSES[index % n_cls]
    factors: dict[str, str] = {}
    if crossed:
        block = index // (n_cls * 3)
        factors["style"] = SCENE_FACTORS["style"][(index // n_cls) % 3]
        offset = index % n_cls + (index // n_cls) % 3
        names = [k for k in SCENE_FACTORS if k != "style"]
        for k, name in enumerate(names):
            levels = SCENE_FACTORS[name]
            factors[name] = levels[(block + offset * (k + 1)) % len(levels)]
    else:
        label = CLASSES[int(rng.integers(n_cls))]
        for name, levels in SCENE_FACTORS.items():
            factors[name] = levels[int(rng.integers(len(levels)))]
    return label, dict(sorted(factors.items()))


def _object_colour(rng: np.random.Generator, colour: str, light: bool) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    h0, h1 = _COLOUR_HUES[colour]
    hue = rng.uniform(h0, h1)
    sat = rng.uniform(0.7, 1.0)
    lightness = rng.uniform(0.55, 0.7) if light else rng.uniform(0.27, 0.4)
    tex_l = lightness + (0.17 if light else -0.13)
    return _hls_rgb(hue, lightness, sat), _hls_rgb(hue, float(np.clip(tex_l, 0.05, 0.92)), sat * 0.7)


def _draw_object(rng: np.random.Generator, canvas: Image.Image, label: str, style: str, colour: str, light: bool,
                 cx: float, cy: float, radius: float) -> np.ndarray:
    """Draw one object on the supersampled ``canvas``; return its ``bool (96, 96)`` mask."""
    big = canvas.size[0]
    obj, tex = _object_colour(rng, colour, light)
    polys = _transform(_shape_polygons(label), cx * _SS, cy * _SS, radius * _SS, rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    if style == "outline":
        width = max(2.0, min(3.5, radius / 7.0))
        shape = _outline(polys, big, width=int(round(rng.uniform(width - 0.5, width + 0.5) * _SS)))
    else:
        shape = _silhouette(polys, big)
    fill = Image.new("RGB", (big, big), obj)
    if style == "textured":
        arr = np.asarray(fill).copy()
        arr[_stripes(rng, big)] = tex
        fill = Image.fromarray(arr, "RGB")
    canvas.paste(fill, (0, 0), shape)
    return np.asarray(shape.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)) >= 128


def _place(rng: np.random.Generator, radius: float, placed: list[tuple[float, float, float]]) -> tuple[float, float]:
    """A centre for a distractor of ``radius`` whose bounding circle overlaps no placed one nor the border."""
    b = _BOUND * radius
    for _ in range(2000):
        x, y = rng.uniform(b + 1.0, IMAGE_SIZE - b - 1.0, size=2)
        if all(math.hypot(x - px, y - py) >= b + pb + 2.0 for px, py, pb in placed):
            return float(x), float(y)
    raise RuntimeError("Could not place a distractor; the world's sizes leave too little room.")  # pragma: no cover


def render_scene(seed: int, index: int, stream: int = ANALYSIS_STREAM) -> Scene:
    """Render world-2 example ``index`` of the generator with ``seed`` on ``stream`` (a pure function of the three).

    The main object (class ``CLASSES[index % 16]`` on the analysis stream) has the factor levels' colour,
    size and position; ``distractors`` smaller objects of other, distinct classes (random colour and style)
    are placed where their bounding circles overlap nothing. The probe class of the ``exists`` question is
    an object in the scene half of the time, an absent class otherwise.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative. Got seed={seed}, index={index} instead.")
    rng = np.random.default_rng([stream, seed, index, 2])
    label, factors = _pick_scene_factors(rng, index, crossed=stream == ANALYSIS_STREAM)
    big = IMAGE_SIZE * _SS
    light = factors["contrast"] == "light-on-dark"
    bg_l = (rng.uniform(0.03, 0.16), rng.uniform(0.03, 0.16)) if light else (rng.uniform(0.84, 0.97), rng.uniform(0.84, 0.97))
    bg_h, bg_s = rng.uniform(0, 360, size=2), rng.uniform(0.0, 0.4, size=2)
    bg_a, bg_b = _hls_rgb(bg_h[0], bg_l[0], bg_s[0]), _hls_rgb(bg_h[1], bg_l[1], bg_s[1])
    canvas = _background(rng, factors["background"], bg_a, bg_b, big)
    lo, hi = _CLUTTER_COUNT[factors["clutter"]]
    _draw_clutter(rng, canvas, int(rng.integers(lo, hi + 1)), colour_l=light)

    radius = rng.uniform(*_SCENE_RADIUS[factors["size"]])
    free = IMAGE_SIZE / 2 - _BOUND * radius - 2.0
    dx, dy = {"centre": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}[factors["position"]]
    jitter = rng.uniform(-2.0, 2.0, size=2)
    cx, cy = IMAGE_SIZE / 2 + dx * free + jitter[0], IMAGE_SIZE / 2 + dy * free + jitter[1]
    others = [c for c in CLASSES if c != label]
    n_dis = _N_DISTRACTORS[factors["distractors"]]
    dis_labels = [others[int(k)] for k in rng.choice(len(others), size=n_dis, replace=False)]
    dis_radii = rng.uniform(*_DISTRACTOR_RADIUS, size=n_dis)
    placed = [(cx, cy, _BOUND * radius)]
    dis_centres = []
    for r in dis_radii:
        x, y = _place(rng, float(r), placed)
        placed.append((x, y, _BOUND * float(r)))
        dis_centres.append((x, y))

    objects = [SceneObject(label, factors["colour"], factors["style"], float(radius), (float(cx), float(cy)),
                           _draw_object(rng, canvas, label, factors["style"], factors["colour"], light, cx, cy, radius))]
    for lab, r, (x, y) in zip(dis_labels, dis_radii, dis_centres):
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        style = SCENE_FACTORS["style"][int(rng.integers(3))]
        objects.append(SceneObject(lab, colour, style, float(r), (x, y), _draw_object(rng, canvas, lab, style, colour, light, x, y, float(r))))
    present = [o.label for o in objects]
    absent = [c for c in CLASSES if c not in present]
    probe = present[int(rng.integers(len(present)))] if rng.random() < 0.5 else absent[int(rng.integers(len(absent)))]
    image = np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.uint8)
    return Scene(image=image, objects=tuple(objects), factors=factors, probe=probe)


class DefaultDataset(Dataset):
    """The embedded synthetic dataset (lazy: examples are rendered on access).

    Parameters
    ----------
    n : int, default 256
        Number of examples.
    seed : int, default 0
        Seed; example ``i`` depends only on ``(seed, i)``.
    stream : int, default 0
        ``0`` for the analysis stream (crossed design), ``1`` for the training stream.

    Examples
    --------
    >>> ds = DefaultDataset(n=48, seed=0)
    >>> ds[0].label, ds[16].factors["style"]
    ('circle', 'outline')
    """

    def __init__(self, n: int = 256, seed: int = 0, stream: int = ANALYSIS_STREAM, world: int | None = None) -> None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"The 'n' parameter of DefaultDataset must be an int in [1, inf). Got {n!r} instead.")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"The 'seed' parameter of DefaultDataset must be an int in [0, inf). Got {seed!r} instead.")
        if stream not in (ANALYSIS_STREAM, TRAIN_STREAM):
            raise ValueError(f"The 'stream' parameter of DefaultDataset must be 0 or 1. Got {stream!r} instead.")
        world = DEFAULT_WORLD if world is None else world
        if world not in WORLDS:
            raise ValueError(f"The 'world' parameter of DefaultDataset must be one of {WORLDS}. Got {world!r} instead.")
        self.n = int(n)
        self.seed = int(seed)
        self.stream = int(stream)
        self.world = int(world)
        self.name = "default" if stream == ANALYSIS_STREAM else "default-train"
        self.classes = list(CLASSES)
        self.factor_names = sorted(FACTORS if world == 1 else SCENE_FACTORS)

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> Scene:
        """The world-2 :class:`Scene` of example ``index`` (objects, masks, answers to every question type)."""
        if self.world != 2:
            raise ValueError(f"DefaultDataset.scene needs world 2; this dataset renders world {self.world}.")
        return render_scene(self.seed, int(index), self.stream)

    def answers(self, question_type: str) -> list[str]:
        """Every example's one-word answer to ``question_type``: world 2 answers every :data:`QUESTION_TYPES`
        (``exists`` names each scene's own probe), world 1 ``class`` and its factors."""
        if self.world == 1:
            if question_type == "class":
                return [self[i].label for i in range(self.n)]
            if question_type in FACTORS:
                return [self[i].factors[question_type] for i in range(self.n)]
            raise ValueError(f"World 1 of the default data answers class and {', '.join(FACTORS)}. "
                             f"Got question type {question_type!r} instead.")
        if question_type not in QUESTION_TYPES:
            raise ValueError(f"Unknown question type {question_type!r}; valid types: {', '.join(QUESTION_TYPES)}.")
        return [self.scene(i).answer(question_type) for i in range(self.n)]

    def _get(self, index: int) -> Example:
        tag = "default" if self.stream == ANALYSIS_STREAM else "train"
        if self.world == 2:
            scene = render_scene(self.seed, index, self.stream)
            return Example(
                id=f"{tag}-w2-s{self.seed}-{index:06d}",
                image=Image.fromarray(scene.image, "RGB"),
                label=scene.label,
                factors=dict(scene.factors),
                mask=scene.mask,
            )
        label, factors, image, mask = render_example(self.seed, index, self.stream)
        return Example(
            id=f"{tag}-s{self.seed}-{index:06d}",
            image=Image.fromarray(image, "RGB"),
            label=label,
            factors=factors,
            mask=mask,
        )
