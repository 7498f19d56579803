"""The shape world and its scorer on drawn images: every attribute read right, near misses rejected, >= 99% on random scenes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sdc.errors import InputError
from sdc.eval import promptsets, scorer, world


def degrade(img: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    """Gaussian blur (sigma in pixels) and additive noise (0-255 scale): what a generated image may look like."""
    x = img.astype(np.float32)
    if blur > 0:
        r = int(3 * blur) + 1
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / blur) ** 2)
        k /= k.sum()
        for axis in (0, 1):
            pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
            xp = np.pad(x, pad, mode="edge")
            x = sum(k[i] * np.take(xp, np.arange(i, i + x.shape[axis]), axis=axis) for i in range(len(k)))
    x = x + rng.normal(0.0, noise, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


JITTER = 0.03  # the scorer is checked on pictures moved and scaled off the templates, as a model draws them


def draw(text: str, seed: int = 0, size: int = 64) -> tuple[world.Prompt, np.ndarray]:
    """The prompt and a picture of it; seed 0 is the template itself, other seeds jitter it."""
    p = world.parse_prompt(text)
    return p, world.draw(world.layout(p, np.random.default_rng(seed), JITTER if seed else 0.0), size)


# ----------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("text, want", [
    ("a red circle on a blue background", world.Prompt("red", "circle", "blue")),
    ("two small yellow squares on a white background", world.Prompt("yellow", "square", "white", 2, "small")),
    ("Three green triangles on a black background.", world.Prompt("green", "triangle", "black", 3)),
    ("a large white square on a red background", world.Prompt("white", "square", "red", size="large")),
    ("a green triangle at the top left on a black background",
     world.Prompt("green", "triangle", "black", position="top left")),
    ("a small blue circle in the center on a yellow background",
     world.Prompt("blue", "circle", "yellow", size="small", position="center")),
])
def test_parse(text, want):
    assert world.parse_prompt(text) == want


@pytest.mark.parametrize("text, needle", [
    ("a purple circle on a blue background", "unknown colour 'purple'"),
    ("a red hexagon on a blue background", "unknown shape 'hexagon'"),
    ("a red circle on a red background", "same colour"),
    ("two red circle on a blue background", "plural"),
    ("a red circles on a blue background", "singular"),
    ("four red circles on a blue background", "unknown count 'four'"),
    ("two large red circles on a blue background", "several shapes are always small"),
    ("a large red circle at the top left on a blue background", "a position needs a single small shape"),
    ("a red circle at the middle left on a blue background", "unknown position 'middle left'"),
    ("a photo of an astronaut riding a horse", "not in the world's grammar"),
    ("", "not in the world's grammar"),
])
def test_parse_rejects_prompts_outside_the_world(text, needle):
    with pytest.raises(InputError) as e:
        world.parse_prompt(text)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and "sdc/eval/world.py" in msg


def test_caption_inverts_parse_for_the_whole_grammar():
    prompts = world.all_prompts()
    assert len(prompts) == len(set(prompts)) == 90 * 17
    for p in prompts:
        assert world.parse_prompt(world.caption(p)) == p


def test_heldout_combinations_are_not_in_training_and_every_pair_is():
    held = world.heldout_triples()
    assert len(held) == 18
    train = {p.triple for p in promptsets.training_prompts()}
    assert not held & train
    assert {p.triple for p in promptsets.heldout_prompts()} == held
    for i, j in ((0, 1), (0, 2), (1, 2)):  # every pair of words a held-out prompt uses was seen in training
        seen = {(t[i], t[j]) for t in train}
        assert all((t[i], t[j]) in seen for t in held)


@pytest.mark.parametrize("name", promptsets.SETS)
def test_shipped_prompt_files_match_the_grammar(name):
    """Regenerate with `python -m sdc.eval.promptsets` after changing the world."""
    assert promptsets.read_prompts(name) == promptsets.generated(name)


def test_read_prompts_errors(tmp_path):
    with pytest.raises(InputError, match="prompt file not found"):
        promptsets.read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="no prompts"):
        promptsets.read_prompts(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("a red circle on a blue background caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        promptsets.read_prompts(tmp_path / "latin1.txt")


# ----------------------------------------------------------------------------- drawing and reading


def test_one_picture_per_caption():
    p = world.parse_prompt("three small red squares on a blue background")
    a = world.layout(p)
    assert a == world.layout(p) == world.layout(p, np.random.default_rng(7))  # no jitter asked: the template
    assert [(s.x, s.y, s.side) for s in a.shapes] == [(x, y, world.SIDES["small"]) for x, y in world.LAYOUTS[3]]
    img = world.draw(a, 96)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    # What a caption leaves open is filled in one way: these say the same and are drawn the same.
    for same in (("a red circle on a blue background", "a large red circle on a blue background"),
                 ("a small red circle on a blue background", "a red circle in the center on a blue background"),
                 ("two red circles on a blue background", "two small red circles on a blue background")):
        assert np.array_equal(*(world.draw(world.layout(world.parse_prompt(t))) for t in same)), same
    j = world.layout(p, np.random.default_rng(7), JITTER)
    assert j != a and j == world.layout(p, np.random.default_rng(7), JITTER)


def test_shapes_stay_apart_and_inside_even_jittered():
    rng = np.random.default_rng(0)
    for p in world.all_prompts():
        for shapes in (world.layout(p).shapes, world.layout(p, rng, JITTER).shapes):
            for s in shapes:
                assert world.MARGIN <= s.x - s.side / 2 and s.x + s.side / 2 <= 1 - world.MARGIN, (p, s)
                assert world.MARGIN <= s.y - s.side / 2 and s.y + s.side / 2 <= 1 - world.MARGIN, (p, s)
            assert all(max(abs(a.x - b.x), abs(a.y - b.y)) >= (a.side + b.side) / 2 + world.GAP
                       for i, a in enumerate(shapes) for b in shapes[i + 1:]), (p, shapes)


@pytest.mark.parametrize("text, attribute, seen", [
    ("a red circle on a blue background", "shape", "circle"),
    ("a red square on a blue background", "shape", "square"),
    ("a red triangle on a blue background", "shape", "triangle"),
    ("a white triangle on a black background", "colour", "white"),
    ("a black triangle on a white background", "background", "white"),
    ("a yellow circle on a green background", "colour", "yellow"),
    ("three small blue squares on a white background", "count", 3),
    ("two blue circles on a yellow background", "count", 2),
    ("a large green square on a red background", "size", "large"),
    ("a small green square on a red background", "size", "small"),
    ("a green triangle at the top left on a black background", "position", "top left"),
    ("a green triangle at the bottom right on a black background", "position", "bottom right"),
    ("a green triangle in the center on a black background", "position", "center"),
])
def test_reads_every_attribute(text, attribute, seen):
    for seed in range(3):
        p, img = draw(text, seed)
        s = scorer.score(img, p)
        assert s.reading.value(attribute) == seen, (seed, s.reading)
        assert s.passed, s.misses()


NEAR_MISSES = [
    ("a red circle on a blue background", dict(colour="yellow"), "colour"),
    ("a red circle on a blue background", dict(background="green"), "background"),
    ("a red circle on a blue background", dict(shape="square"), "shape"),
    ("a red square on a blue background", dict(shape="circle"), "shape"),
    ("a red triangle on a blue background", dict(shape="circle"), "shape"),
    ("a red square on a blue background", dict(shape="triangle"), "shape"),
    ("two small red squares on a white background", dict(count=3), "count"),
    ("three small red squares on a white background", dict(count=2), "count"),
    ("a small red square on a white background", dict(count=2), "count"),
    ("a small red square on a white background", dict(size="large"), "size"),
    ("a large red square on a white background", dict(size="small"), "size"),
    ("a red square at the top left on a white background", dict(position="top right"), "position"),
    ("a red square at the bottom left on a white background", dict(position="center"), "position"),
]


@pytest.mark.parametrize("text, change, attribute", NEAR_MISSES)
def test_rejects_near_misses(text, change, attribute):
    """An image of `text` scored against a prompt that differs in one attribute fails exactly that attribute."""
    for seed in range(3):
        p, img = draw(text, seed)
        s = scorer.score(img, replace(p, **change))
        assert not s.passed
        assert [a for a, (_, _, ok) in s.checks.items() if not ok] == [attribute], s.misses()


def test_accuracy_on_random_degraded_scenes():
    """>= 99% of random drawn scenes pass, per attribute and overall, with blur and noise like generated images."""
    rng = np.random.default_rng(1234)
    prompts = world.all_prompts()
    tally: dict[str, list[bool]] = {}
    for _ in range(300):
        p = world.random_prompt(rng, prompts)
        img = degrade(world.draw(world.layout(p, rng, JITTER)), rng, rng.uniform(0, 1.0), rng.uniform(0, 12))
        s = scorer.score(img, p)
        for a, (_, _, ok) in s.checks.items():
            tally.setdefault(a, []).append(ok)
        tally.setdefault("overall", []).append(s.passed)
    acc = {a: float(np.mean(v)) for a, v in tally.items()}
    assert set(acc) == {"background", "colour", "shape", "count", "size", "position", "overall"}
    assert all(v >= 0.99 for v in acc.values()), acc


def test_blank_and_other_images():
    assert scorer.read(np.zeros((64, 64, 3), np.uint8)) == scorer.Reading("black", None, None, 0, None, None)
    grey = np.full((64, 64, 3), 128, np.uint8)  # no palette colour near: nothing to name
    assert scorer.read(grey).background is None
    p, img = draw("a red circle on a blue background")
    big = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)  # 256 px: read at 128
    assert scorer.score(big, p).passed
    assert scorer.score(img.astype(np.float32) / 255.0, p).passed  # float images in [0, 1]
    with pytest.raises(ValueError):
        scorer.read(np.zeros((64, 64), np.uint8))
