"""A procedural world of flat shapes on plain backgrounds: captions, a parser, layouts and a renderer (numpy only).

Why a made-up world: prompt adherence can then be measured by a program. Every caption the grammar
below produces can be drawn (`layout` + `draw`), and every drawn image can be read back
(`sdc.eval.scorer`), so a tiny model trained on this world in minutes on a CPU has a yardstick that
says, attribute by attribute, whether an image shows what its prompt asked for.

Grammar (one scene = one or more identical shapes on one background colour):

    [a|one|two|three] [small|large] <colour> <shape>[s] [at the top left|... |in the center] on a <colour> background

colours: red green blue yellow white black (the shape's differs from the background's);
shapes: circle square triangle. Several shapes are always small; a position needs one small shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from sdc.errors import InputError

# RGB cube corners: every pair is at least 255 apart, so a pixel's colour survives blur, noise and tint.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "white": (255, 255, 255), "black": (0, 0, 0),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
# Position phrase -> anchor (x, y) as fractions of the image; y grows downwards.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.28, 0.28), "top right": (0.72, 0.28), "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72), "center": (0.5, 0.5),
}
# Side (circle: diameter) as a fraction of the image side. One fixed side per size, so that a caption maps to
# one picture; a small shape is 20 pixels in a 64-pixel image, big enough that a tiny model draws a
# recognisable corner. The scorer splits sizes halfway between the two.
SIDES = {"small": 0.31, "large": 0.6}
# Where shapes go when the caption gives no position, by count: one centred, two side by side, three as
# two above one.
LAYOUTS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),), 2: ((0.25, 0.5), (0.75, 0.5)), 3: ((0.25, 0.25), (0.75, 0.25), (0.5, 0.75)),
}
MARGIN = 0.05  # empty border around every shape
GAP = 0.07  # minimum empty space between two shapes of one scene

EXAMPLE = "a red circle on a blue background"
_RE = re.compile(
    r"^(?P<count>\w+) (?:(?P<size>\w+) )?(?P<colour>\w+) (?P<shape>\w+)"
    r"(?: (?:at the (?P<pos>\w+ \w+)|in the (?P<center>\w+)))? on an? (?P<bg>\w+) background$"
)


@dataclass(frozen=True)
class Prompt:
    """What a caption asks for; None means "any" (the caption does not say)."""

    colour: str
    shape: str
    background: str
    count: int = 1
    size: str | None = None
    position: str | None = None

    def attributes(self) -> dict[str, object]:
        """The attributes the prompt constrains, by name: the scorer checks exactly these."""
        out = {"background": self.background, "colour": self.colour, "shape": self.shape, "count": self.count}
        if self.size is not None:
            out["size"] = self.size
        if self.position is not None:
            out["position"] = self.position
        return out

    @property
    def triple(self) -> tuple[str, str, str]:
        """(colour, shape, background): the combination held out of training or not."""
        return (self.colour, self.shape, self.background)


@dataclass(frozen=True)
class Shape:
    """One drawn shape: centre (x, y) and side, all as fractions of the image side."""

    kind: str
    x: float
    y: float
    side: float


@dataclass(frozen=True)
class Scene:
    """A prompt and one concrete layout of it."""

    prompt: Prompt
    shapes: tuple[Shape, ...]


def _bad(text: str, problem: str) -> InputError:
    return InputError(f"prompt {text!r}: {problem} (prompts read like {EXAMPLE!r}; grammar in sdc/eval/world.py)")


def _one_of(text: str, what: str, word: str | None, allowed) -> str:
    if word not in allowed:
        raise _bad(text, f"unknown {what} {word!r}; choose {', '.join(allowed)}")
    return word


def check(prompt: Prompt, text: str | None = None) -> Prompt:
    """The world's rules beyond the grammar; `text` names the prompt in the error."""
    text = caption(prompt) if text is None else text
    _one_of(text, "colour", prompt.colour, COLOURS)
    _one_of(text, "shape", prompt.shape, SHAPES)
    _one_of(text, "background colour", prompt.background, COLOURS)
    if prompt.size is not None:
        _one_of(text, "size", prompt.size, SIZES)
    if prompt.position is not None:
        _one_of(text, "position", prompt.position, tuple(POSITIONS))
    if prompt.colour == prompt.background:
        raise _bad(text, "the shape and the background have the same colour")
    if prompt.count not in COUNT_WORDS:
        raise _bad(text, f"count {prompt.count} is outside the world; choose 1, 2 or 3")
    if prompt.count > 1 and prompt.size == "large":
        raise _bad(text, "several shapes are always small in this world")
    if prompt.position is not None and (prompt.count > 1 or prompt.size == "large"):
        raise _bad(text, "a position needs a single small shape")
    return prompt


def parse_prompt(text: str) -> Prompt:
    """Caption -> the attributes it asks for; InputError for anything outside the grammar."""
    if not isinstance(text, str):
        raise InputError(f"prompt must be a string, got {type(text).__name__}")
    norm = " ".join(text.lower().replace(",", " ").split()).rstrip(".").strip()
    m = _RE.match(norm)
    if not m:
        raise _bad(text, "not in the world's grammar")
    count = COUNTS.get(m["count"])
    if count is None:
        raise _bad(text, f"unknown count {m['count']!r}; choose a, one, two or three")
    shape = m["shape"]
    plural = shape not in SHAPES and shape.endswith("s") and shape[:-1] in SHAPES
    shape = shape[:-1] if plural else shape
    if shape in SHAPES and plural != (count > 1):
        raise _bad(text, f"{m['count']!r} needs {'plural' if count > 1 else 'singular'} {m['shape']!r}")
    pos = m["pos"] if m["pos"] is not None else {"centre": "center"}.get(m["center"], m["center"])
    if pos is not None and m["center"] is not None and pos != "center":
        raise _bad(text, f"unknown position {m['center']!r}; 'in the' is followed by center")
    prompt = Prompt(colour=m["colour"], shape=shape, background=m["bg"], count=count, size=m["size"], position=pos)
    return check(prompt, text)


def caption(p: Prompt | Scene) -> str:
    """The grammar's canonical sentence for a prompt (or a scene's prompt); parse_prompt inverts it."""
    p = p.prompt if isinstance(p, Scene) else p
    words = [COUNT_WORDS[p.count]]
    if p.size:
        words.append(p.size)
    words += [p.colour, p.shape + ("s" if p.count > 1 else "")]
    if p.position == "center":
        words.append("in the center")
    elif p.position:
        words.append(f"at the {p.position}")
    words.append(f"on a {p.background} background")
    return " ".join(words)


def all_prompts() -> list[Prompt]:
    """Every prompt the grammar allows, in a fixed order."""
    out = []
    for colour in COLOURS:
        for shape in SHAPES:
            for bg in COLOURS:
                if bg == colour:
                    continue
                base = Prompt(colour, shape, bg)
                for size in (None, "small", "large"):
                    out.append(replace(base, size=size))
                for size in (None, "small"):
                    out += [replace(base, size=size, position=pos) for pos in POSITIONS]
                    out += [replace(base, count=n, size=size) for n in (2, 3)]
    return out


def heldout_triples() -> set[tuple[str, str, str]]:
    """(colour, shape, background) combinations kept out of training, one per (colour, shape) pair.

    The background is chosen so that every (shape, background) pair loses one of its five colours and
    every (colour, background) pair at most one of its three shapes: each word and each pair of words
    is still seen in training, only these combinations of three are new.
    """
    out = set()
    for i, colour in enumerate(COLOURS):
        for j, shape in enumerate(SHAPES):
            out.add((colour, shape, COLOURS[(i + 1 + 2 * j) % len(COLOURS)]))
    return out


def layout(prompt: Prompt, rng: np.random.Generator | None = None, jitter: float = 0.0) -> Scene:
    """The arrangement of a prompt: one fixed picture per caption, unless `rng` and `jitter` move it.

    What a caption leaves open is filled the same way every time: no size means large for one shape and
    small for several or for a positioned one; no position means LAYOUTS. A caption then maps to exactly
    one picture, so a tiny model learns a caption-to-template map (and composes it to colour combinations
    it never saw) in minutes; with shapes placed and sized at random it learnt the average of all
    placements, a blob (measured: 3% of held-out prompts right after the same training).

    `jitter` (fraction of the image side) moves every shape and scales its side by up to that much: the
    scorer's tests use it to check that reading does not depend on the exact template.
    """
    check(prompt)
    side = SIDES[prompt.size or ("small" if prompt.count > 1 or prompt.position else "large")]
    anchors = [POSITIONS[prompt.position]] if prompt.position is not None else LAYOUTS[prompt.count]
    shapes = []
    for ax, ay in anchors:
        dx, dy, ds = (0.0, 0.0, 0.0) if rng is None or not jitter else rng.uniform(-jitter, jitter, size=3)
        shapes.append(Shape(prompt.shape, float(ax + dx), float(ay + dy), float(side * (1 + ds))))
    return Scene(prompt, tuple(shapes))


def random_prompt(rng: np.random.Generator, prompts: list[Prompt] | None = None) -> Prompt:
    """A prompt drawn uniformly from `prompts` (default: the whole grammar)."""
    prompts = prompts if prompts is not None else all_prompts()
    return prompts[int(rng.integers(len(prompts)))]


def _inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in shape units centred on the shape (v grows downwards), are inside."""
    if kind == "circle":
        return u * u + v * v <= 0.25
    if kind == "square":
        return (np.abs(u) <= 0.5) & (np.abs(v) <= 0.5)
    if kind == "triangle":  # upright, apex at the top centre, base along the bottom edge
        return (np.abs(v) <= 0.5) & (np.abs(u) <= 0.5 * (v + 0.5))
    raise ValueError(kind)


def draw(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """Render a scene as uint8 [size, size, 3], anti-aliased by averaging supersample² points per pixel."""
    n = size * supersample
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    ys, xs = c[:, None], c[None, :]
    cover = np.zeros((n, n), dtype=np.float32)
    for s in scene.shapes:
        cover = np.maximum(cover, _inside(s.kind, (xs - s.x) / s.side, (ys - s.y) / s.side))
    cover = cover.reshape(size, supersample, size, supersample).mean(axis=(1, 3))[..., None]
    fg = np.asarray(PALETTE[scene.prompt.colour], dtype=np.float32)
    bg = np.asarray(PALETTE[scene.prompt.background], dtype=np.float32)
    return np.round(bg + cover * (fg - bg)).astype(np.uint8)
