"""Prompt adherence of a bundle: generate every (prompt, seed), score each image, tally per attribute; contact sheets.

This is the yardstick for anything that changes a bundle's numbers (precision, passes, targets): the
same prompts and seeds through two bundles give two accuracies that can be compared. Each image has
its own fixed seed, so a result is reproducible image by image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdc.errors import InputError
from sdc.eval import scorer, world

# What the shipped model (models/tiny-shapes) was measured to want; the bundle's own defaults (50 steps,
# guidance 7.5) are SD's and oversaturate it.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0
ATTRIBUTES = ("background", "colour", "shape", "count", "size", "position")


@dataclass
class ImageResult:
    """One generated image's score."""

    prompt: str
    seed: int
    passed: bool
    checks: dict[str, tuple[object, object, bool]]  # attribute -> (wanted, seen, ok)
    seconds: float

    def misses(self) -> str:
        return scorer.misses_text(self.checks)


@dataclass
class EvalResult:
    """Accuracy of a bundle on prompts x seeds: per attribute (over the images whose prompt asks for it) and overall."""

    bundle: str
    provider: str
    target: str | None
    precision: str | None
    steps: int
    guidance: float
    scheduler: str | None
    seeds: list[int]
    results: list[ImageResult]
    images: list[np.ndarray] = field(default_factory=list, repr=False)  # uint8 HxWx3, in `results` order
    artifacts: dict[str, str] = field(default_factory=dict)  # submodel -> "target/precision" that ran

    @property
    def overall(self) -> float:
        """Fraction of images that get every attribute their prompt asks for right."""
        return float(np.mean([r.passed for r in self.results])) if self.results else 0.0

    def per_attribute(self) -> dict[str, tuple[float, int]]:
        """attribute -> (accuracy, number of images whose prompt asks for it)."""
        out = {}
        for a in ATTRIBUTES:
            oks = [r.checks[a][2] for r in self.results if a in r.checks]
            if oks:
                out[a] = (float(np.mean(oks)), len(oks))
        return out

    @property
    def seconds_per_image(self) -> float:
        return float(np.mean([r.seconds for r in self.results])) if self.results else 0.0

    def to_json(self) -> dict:
        return {
            "bundle": self.bundle, "provider": self.provider, "target": self.target, "precision": self.precision,
            "artifacts": self.artifacts, "steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler,
            "seeds": self.seeds,
            "images": len(self.results), "overall": self.overall, "seconds_per_image": self.seconds_per_image,
            "per_attribute": {a: {"accuracy": acc, "images": n} for a, (acc, n) in self.per_attribute().items()},
            "results": [{"prompt": r.prompt, "seed": r.seed, "passed": r.passed, "seconds": r.seconds,
                         "checks": {a: {"wanted": w, "seen": s, "ok": ok} for a, (w, s, ok) in r.checks.items()}}
                        for r in self.results],
        }


def parse_all(prompts: Sequence[str], source: str = "prompt list") -> list[world.Prompt]:
    """Every prompt parsed before any image is generated; the error names the source and line."""
    out = []
    for i, text in enumerate(prompts, 1):
        try:
            out.append(world.parse_prompt(text))
        except InputError as e:
            raise InputError(f"{source}, prompt {i}: {e}") from None
    return out


def evaluate(bundle, prompts: Sequence[str], seeds: int | Sequence[int] = 4, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, provider: str = "cpu", precision: str | None = None,
             target: str | None = None, scheduler: str | None = None, verify: str = "sizes",
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Generate each prompt with each seed (one image per call, seed fixed per image) and score it."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise InputError("seeds: need at least one seed")
    parsed = parse_all(prompts)
    import sdc.runtime

    # fp16/bf16 (GPU targets) on the CPU: emulated per op, each result rounded as the GPU would, not ONNX
    # Runtime's own CPU path (fp32 around the ops it lacks; no bf16 kernels): the adherence a GPU would give.
    pipe = sdc.runtime.load(bundle, provider=provider, precision=precision, target=target, verify=verify, emulate=True)
    ran = {n: f"{a['target']}/{a['precision']}" + (" (emulated per op)" if getattr(pipe.models[n], "emulated", None)
                                                   else "") for n, a in pipe.artifacts.items()}
    result = EvalResult(str(bundle), provider, target, precision, int(steps), float(guidance), scheduler, seed_list, [],
                        artifacts=ran)
    total = len(parsed) * len(seed_list)
    for text, prompt in zip(prompts, parsed):
        for seed in seed_list:
            t0 = time.perf_counter()
            img = pipe(text, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                       scheduler=scheduler, output_type="np")[0]
            dt = time.perf_counter() - t0
            img = np.round(img * 255.0).astype(np.uint8)
            s = scorer.score(img, prompt)
            result.results.append(ImageResult(text, seed, s.passed, s.checks, dt))
            result.images.append(img)
            if progress is not None:
                progress(len(result.results), total)
    return result


POSITION_TAGS = {"top left": "TL", "top right": "TR", "bottom left": "BL", "bottom right": "BR", "center": "C"}


def short_label(text: str) -> tuple[str, str]:
    """Two short lines naming a prompt, e.g. ('2 small yellow square', 'on white')."""
    p = world.parse_prompt(text)
    first = " ".join(w for w in (str(p.count) if p.count > 1 else "", p.size or "", p.colour, p.shape,
                                 POSITION_TAGS.get(p.position or "", "")) if w)
    return first, f"on {p.background}"


def write_sheet(result: EvalResult, path: str | Path, columns: int | None = None, cell: int = 128) -> Path:
    """A PNG grid: each image scaled to `cell` pixels with a green (pass) or red (fail) frame, its label,
    its seed and, when it failed, the first attribute it got wrong."""
    from PIL import Image, ImageDraw, ImageFont

    if not result.images:
        raise InputError("no images to put on a contact sheet")
    n = len(result.images)
    columns = columns or len(result.seeds) * max(1, min(4, 16 // max(1, len(result.seeds))))
    rows = -(-n // columns)
    pad, text_h = 4, 36
    w, h = cell + 2 * pad, cell + 2 * pad + text_h
    sheet = Image.new("RGB", (columns * w, rows * h), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (img, r) in enumerate(zip(result.images, result.results)):
        x, y = (k % columns) * w, (k // columns) * h
        draw.rectangle([x, y, x + w - 1, y + cell + 2 * pad - 1], fill=(40, 170, 60) if r.passed else (210, 40, 40))
        sheet.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (x + pad, y + pad))
        first, second = short_label(r.prompt)
        bad = [a for a, (_, _, ok) in r.checks.items() if not ok]
        mark = "ok" if r.passed else "x " + ",".join(bad)
        ty = y + cell + 2 * pad
        draw.text((x + 2, ty), first, fill=(235, 235, 235), font=font)
        draw.text((x + 2, ty + 11), f"{second}  s{r.seed}", fill=(235, 235, 235), font=font)
        draw.text((x + 2, ty + 22), mark, fill=(120, 220, 120) if r.passed else (255, 120, 120), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
