"""Synthetic scenes with known ground truth, for vision-language lessons (phase 7) and the vision-text capstone.

A scene is a few coloured shapes on a small canvas; from its description come the image (drawn with PIL), a caption,
and question/answer pairs about colour, shape, count and spatial relations. Known structure makes claims measurable:
compositional generalisation (colour-shape pairs held out of training), counting, left/right and above/below.

    gen = SceneGenerator(image_size=32, seed=0)
    scenes = gen.sample(100, np.random.default_rng(0), split="train")
    scenes[0].image()        # PIL.Image, RGB
    scenes[0].caption()      # "a small red circle left of a large blue square"
    scenes[0].questions()    # [Question(text, answer, kind), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40),
           "purple": (150, 60, 190), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
BACKGROUND = (245, 245, 245)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
# colour-shape pairs never drawn in the training split (the compositional generalisation test)
DEFAULT_HELD_OUT = (("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "cross"))


@dataclass(frozen=True)
class Thing:
    """One shape in a scene: what it is and where (centre in pixels, radius in pixels)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float

    def name(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Question:
    """A question about a scene, its one-word answer, and its kind (colour, shape, count, position)."""

    text: str
    answer: str
    kind: str


@dataclass(frozen=True)
class Scene:
    """Shapes on a square canvas of `image_size` pixels."""

    things: tuple[Thing, ...]
    image_size: int

    def image(self):
        """The scene drawn with PIL (RGB, image_size x image_size)."""
        from PIL import Image, ImageDraw

        canvas = Image.new("RGB", (self.image_size, self.image_size), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        for t in self.things:
            fill, (x, y, r) = COLOURS[t.colour], (t.x, t.y, t.radius)
            if t.shape == "circle":
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
            elif t.shape == "square":
                s = r * 0.85
                draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
            elif t.shape == "triangle":
                draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
            else:  # cross
                w = max(1.0, r * 0.35)
                draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
                draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
        return canvas

    def array(self) -> np.ndarray:
        """The image as float32 in [0, 1], shape (3, H, W) (channels first, as vision models take it)."""
        return np.asarray(self.image(), dtype=np.float32).transpose(2, 0, 1) / 255.0

    def caption(self) -> str:
        """A caption naming every shape, left to right ("a small red circle left of a large blue square")."""
        ordered = sorted(self.things, key=lambda t: t.x)
        return " left of ".join(f"a {t.name()}" for t in ordered)

    def questions(self) -> list[Question]:
        """Every question the scene answers unambiguously: colour and size of a shape that occurs once, the shape of a
        colour that occurs once, the count of each shape (zero included), left/right and above/below of two uniquely
        named shapes."""
        out = []
        shapes = [t.shape for t in self.things]
        colours = [t.colour for t in self.things]
        for t in self.things:
            if shapes.count(t.shape) == 1:
                out.append(Question(f"what colour is the {t.shape}?", t.colour, "colour"))
                out.append(Question(f"what size is the {t.shape}?", t.size, "size"))
            if colours.count(t.colour) == 1:
                out.append(Question(f"what shape is the {t.colour} object?", t.shape, "shape"))
        for shape in SHAPES:
            out.append(Question(f"how many {shape}s are there?", NUMBER_WORDS[shapes.count(shape)], "count"))
        unique = [t for t in self.things if shapes.count(t.shape) == 1]
        for a in unique:
            for b in unique:
                if a is b:
                    continue
                if abs(a.x - b.x) > a.radius:
                    out.append(Question(f"is the {a.shape} left of the {b.shape}?", "yes" if a.x < b.x else "no",
                                        "position"))
                if abs(a.y - b.y) > a.radius:
                    out.append(Question(f"is the {a.shape} above the {b.shape}?", "yes" if a.y < b.y else "no",
                                        "position"))
        return out


class SceneGenerator:
    """Random scenes of 1..max_things shapes that do not overlap, with some colour-shape pairs held out of training."""

    def __init__(self, image_size: int = 32, max_things: int = 3, held_out=DEFAULT_HELD_OUT,
                 colours=tuple(COLOURS), shapes=SHAPES):
        if image_size < 16:
            raise ValueError(f"image_size {image_size} is too small to draw shapes; use 16 or more")
        unknown = [(c, s) for c, s in held_out if c not in colours or s not in shapes]
        if unknown:
            raise ValueError(f"held-out pairs {unknown} name colours or shapes the generator does not draw")
        self.image_size, self.max_things = image_size, max_things
        self.held_out = tuple(tuple(p) for p in held_out)
        self.colours, self.shapes = tuple(colours), tuple(shapes)

    def _thing(self, rng: np.random.Generator, split: str) -> tuple[str, str]:
        while True:
            pair = (self.colours[rng.integers(len(self.colours))], self.shapes[rng.integers(len(self.shapes))])
            if (pair in self.held_out) == (split == "held_out"):
                return pair

    def scene(self, rng: np.random.Generator, split: str = "train", n_things: int | None = None) -> Scene:
        """One scene. split: "train" (no held-out pair), "test" (no held-out pair; fresh draws), or "held_out"
        (every shape is a held-out colour-shape pair)."""
        if split not in ("train", "test", "held_out"):
            raise ValueError(f"split must be 'train', 'test' or 'held_out', got {split!r}")
        n = int(rng.integers(1, self.max_things + 1)) if n_things is None else n_things
        size = self.image_size
        for _ in range(200):  # rejection sampling of non-overlapping positions
            things = []
            for _ in range(n):
                colour, shape = self._thing(rng, split)
                big = rng.random() < 0.5
                radius = size * (0.16 if big else 0.10)
                x, y = (float(v) for v in rng.uniform(radius + 1, size - radius - 1, size=2))
                things.append(Thing(shape, colour, "large" if big else "small", x, y, radius))
            if all(np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius + 1
                   for i, a in enumerate(things) for b in things[i + 1:]):
                return Scene(tuple(things), size)
        raise RuntimeError(f"could not place {n} shapes without overlap on {size} px; lower max_things")

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Scene]:
        return [self.scene(rng, split) for _ in range(n)]
