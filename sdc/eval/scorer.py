"""Reads a picture of the shape world back (colours, shape kind, count, size, position) and scores it against a prompt.

Numpy only and deterministic, so the runtime can score its own images. The reading is deliberately
simple and geometric, so that a miss can be explained: every pixel is snapped to the nearest palette
colour (or left unknown when it is far from all of them, as blended edges are); the most common
colour is the background, the most common other colour the shapes'; shapes are the connected
regions of that colour; a region's kind comes from how it fills its bounding box and its corners
(a square fills all four, a circle none, a triangle only the bottom two).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdc.eval.world import COLOURS, PALETTE, POSITIONS, SIDES, Prompt

# A pixel farther than this (RGB distance, 0-255 scale) from every palette colour is left unknown;
# palette colours are >= 255 apart, so a pixel is never near two of them.
COLOUR_RADIUS = 120.0
MIN_REGION = 0.006  # a region smaller than this fraction of the image is noise, not a shape
MIN_REGION_RELATIVE = 0.2  # ... and so is one smaller than this fraction of the largest region
SIZE_SPLIT = (SIDES["small"] + SIDES["large"]) / 2
CORNER = 0.3  # the corner triangles of a bounding box whose fill tells the kinds apart: legs of this fraction
# (fill of bounding box, fill of top corners, fill of bottom corners) of the ideal shapes.
PROTOTYPES = {"square": (1.0, 1.0, 1.0), "circle": (np.pi / 4, 0.0, 0.0), "triangle": (0.5, 0.0, 0.67)}


@dataclass(frozen=True)
class Region:
    """One connected region of the shape colour."""

    kind: str
    area: int
    x: float  # centroid, fraction of the image width
    y: float
    side: float  # larger bounding-box side, fraction of the image side
    features: tuple[float, float, float]  # (box fill, top-corner fill, bottom-corner fill)


@dataclass(frozen=True)
class Reading:
    """What the scorer sees in an image; None where it sees nothing it can name."""

    background: str | None
    colour: str | None
    shape: str | None  # the regions' common kind, "mixed" when they differ
    count: int
    size: str | None  # "mixed" when the regions differ
    position: str | None  # nearest anchor of the single region's centroid
    regions: tuple[Region, ...] = field(default=())

    def value(self, attribute: str) -> object:
        return getattr(self, attribute)


def misses_text(checks: dict[str, tuple[object, object, bool]]) -> str:
    """The failed attributes of a score's checks as 'shape: wanted circle, saw square; ...' ('' when none)."""
    return "; ".join(f"{a}: wanted {w}, saw {s}" for a, (w, s, ok) in checks.items() if not ok)


@dataclass(frozen=True)
class Score:
    """Per requested attribute: (wanted, seen, passed); `passed` is true when every attribute is."""

    checks: dict[str, tuple[object, object, bool]]
    reading: Reading

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.checks.values())

    def misses(self) -> str:
        return misses_text(self.checks)


MAX_SIDE = 128  # larger images are box-downsampled first: the shapes stay readable, the labelling stays fast


def as_rgb255(image) -> np.ndarray:
    """float32 [H, W, 3] on the 0-255 scale from uint8 or [0, 1] floats (or a PIL image), at most MAX_SIDE a side."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    img = arr.astype(np.float32) * (1.0 if arr.dtype == np.uint8 else 255.0)
    f = -(-max(img.shape[:2]) // MAX_SIDE)
    if f > 1:
        h, w = img.shape[0] // f * f, img.shape[1] // f * f
        img = img[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3))
    return img


def classify_pixels(image) -> tuple[np.ndarray, np.ndarray]:
    """([H, W] index of the nearest palette colour (order of world.COLOURS), [H, W] whether it is near).

    Colours are counted over near pixels only; shapes are cut at the nearest-colour boundary, which on a
    blurred edge between two palette colours is the 50% line, where the sharp edge was.
    """
    img = as_rgb255(image)
    pal = np.asarray([PALETTE[c] for c in COLOURS], dtype=np.float32)
    d = np.linalg.norm(img[:, :, None, :] - pal[None, None], axis=-1)
    return d.argmin(-1), d.min(-1) <= COLOUR_RADIUS


def label_regions(mask: np.ndarray) -> np.ndarray:
    """Connected regions (8-neighbourhood) of a boolean mask: 0 outside, 1..n inside, by first pixel order.

    Min-label propagation instead of a flood fill: a few dozen whole-array passes on a 64x64 image,
    numpy only, and the labels do not depend on visiting order.
    """
    h, w = mask.shape
    big = h * w + 1
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        nb = np.min([p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        new = np.where(mask, nb, big)
        if np.array_equal(new, lab):
            break
        lab = new
    out = np.zeros((h, w), dtype=np.int64)
    out[mask] = np.searchsorted(np.unique(lab[mask]), lab[mask]) + 1
    return out


def _corner_fill(box: np.ndarray) -> tuple[float, float]:
    """Mean fill of the two top and the two bottom corner triangles (legs CORNER x the box sides)."""
    h, w = box.shape
    v = (np.arange(h) + 0.5)[:, None] / h
    u = (np.arange(w) + 0.5)[None, :] / w
    fills = []
    for cu, cv in ((u, v), (1 - u, v), (u, 1 - v), (1 - u, 1 - v)):  # TL, TR, BL, BR
        sel = (cu + cv) < CORNER
        fills.append(float(box[sel].mean()) if sel.any() else 0.0)
    return (fills[0] + fills[1]) / 2, (fills[2] + fills[3]) / 2


SPUR = 0.34  # an outermost row or column with under this fraction of its neighbour's pixels is a stray edge pixel


def _trim(box: np.ndarray) -> np.ndarray:
    """The box without stray pixels along its sides (noise on an edge would otherwise widen the box).

    A triangle's apex grows by about a pixel a row, so its rows stay; a lone pixel next to a full edge goes.
    """
    changed = True
    while changed and min(box.shape) > 2:
        changed = False
        for axis in (0, 1):
            prof = box.sum(axis=1 - axis)
            for end, nxt in ((0, 1), (-1, -2)):
                if prof[end] < SPUR * prof[nxt]:
                    box = np.delete(box, end % len(prof), axis=axis)
                    changed = True
                    break
            if changed:
                break
    return box


MIN_SYMMETRY = 0.7  # IoU of a region with its mirror image; every shape of the world is mirror-symmetric
MAX_PROTOTYPE_DISTANCE = 0.5  # features farther than this from every prototype: a blob, not a shape


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / max(1.0, np.maximum(a, b).sum()))


def _kind(box: np.ndarray, features: tuple[float, float, float]) -> str:
    """Nearest prototype, or "blob" for a region no shape of the world looks like.

    Without the blob test every irregular smudge would read as a circle (the prototype between the other two).
    """
    f = np.asarray(features)
    dist = {k: float(np.sqrt(np.sum((f - np.asarray(v)) ** 2))) for k, v in PROTOTYPES.items()}
    kind = min(dist, key=dist.get)
    symmetric = _iou(box, box[:, ::-1]) >= MIN_SYMMETRY and (kind == "triangle" or _iou(box, box[::-1]) >= MIN_SYMMETRY)
    return kind if symmetric and dist[kind] <= MAX_PROTOTYPE_DISTANCE else "blob"


def _regions(mask: np.ndarray) -> list[Region]:
    h, w = mask.shape
    labels = label_regions(mask)
    found = []
    for k in range(1, int(labels.max()) + 1):
        ys, xs = np.nonzero(labels == k)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = _trim((labels[y0:y1, x0:x1] == k).astype(np.float32))
        top, bottom = _corner_fill(box)
        feats = (float(box.mean()), top, bottom)
        found.append(Region(_kind(box, feats), len(ys), float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h,
                            max(y1 - y0, x1 - x0) / max(h, w), feats))
    if not found:
        return []
    largest = max(r.area for r in found)
    keep = [r for r in found if r.area >= MIN_REGION * h * w and r.area >= MIN_REGION_RELATIVE * largest]
    return sorted(keep, key=lambda r: (r.y, r.x))


def _common(values: list[str]) -> str | None:
    if not values:
        return None
    return values[0] if all(v == values[0] for v in values) else "mixed"


def read(image: np.ndarray) -> Reading:
    """What an HxWx3 image (uint8, or float in [0, 1]) shows."""
    cls, near = classify_pixels(image)
    counts = np.bincount(cls[near].ravel(), minlength=len(COLOURS))
    if counts.sum() == 0:
        return Reading(None, None, None, 0, None, None)
    bg = int(counts.argmax())
    counts[bg] = 0
    if counts.max() < MIN_REGION * cls.size:
        return Reading(COLOURS[bg], None, None, 0, None, None)
    fg = int(counts.argmax())
    regions = _regions(cls == fg)
    sizes = ["small" if r.side < SIZE_SPLIT else "large" for r in regions]
    position = None
    if len(regions) == 1:
        r = regions[0]
        position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - r.x) ** 2 + (POSITIONS[p][1] - r.y) ** 2)
    return Reading(COLOURS[bg], COLOURS[fg], _common([r.kind for r in regions]), len(regions), _common(sizes),
                   position, tuple(regions))


def score(image: np.ndarray, prompt: Prompt) -> Score:
    """Each attribute the prompt asks for, checked against what `read` sees."""
    reading = read(image)
    checks = {}
    for attribute, wanted in prompt.attributes().items():
        seen = reading.value(attribute)
        checks[attribute] = (wanted, seen, seen == wanted)
    return Score(checks, reading)
