"""`sdc compare` as a function: one bundle, two precisions (or targets), the same prompts and seeds, side by side.

What a user reads before choosing a precision: time per image and per UNet step, peak memory and
artifact size of each variant, and how far the images drift (PSNR, SSIM of the final images, the
relative error of the final latents). Each variant runs the whole pipeline in a process of its own
(sdc.bench.worker, task "generate"), so its peak RSS is its own.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sdc.errors import InputError

DEFAULT_PROMPTS = Path(__file__).parent / "data" / "compare_prompts.txt"


@dataclass(frozen=True)
class CompareOptions:
    precision: str = "int8"
    against: str = "fp32"
    target: str | None = None  # None: the one tuned for the CPU provider
    against_target: str | None = None
    prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    steps: int = 20
    guidance: float = 7.5
    height: int | None = None  # None: the bundle's default size
    width: int | None = None
    threads: int = 0


@dataclass
class VariantResult:
    label: str
    precision: str
    status: str
    reason: str = ""
    seconds_per_image: float = 0.0
    unet_step_seconds: float = 0.0
    load_seconds: float = 0.0
    peak_rss_bytes: int = 0
    artifact_bytes: int = 0  # the artifacts this variant ran, weights included
    artifacts: dict = field(default_factory=dict)
    adherence: float | None = None  # shape-world prompts only: fraction of images the scorer passes (sdc.eval)


@dataclass
class Agreement:
    prompt: str
    seed: int
    psnr_db: float
    ssim: float
    latent_rel_error: float


@dataclass
class CompareResult:
    bundle: str
    command: str
    options: CompareOptions
    machine: dict
    variants: list[VariantResult]
    agreement: list[Agreement]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(v.status == "ok" for v in self.variants)

    def summary(self) -> dict:
        if not self.agreement:
            return {}
        finite = [a.psnr_db for a in self.agreement if np.isfinite(a.psnr_db)]
        return {"psnr_db_mean": float(np.mean(finite)) if finite else float("inf"),
                "psnr_db_min": min((a.psnr_db for a in self.agreement), default=float("inf")),
                "ssim_mean": float(np.mean([a.ssim for a in self.agreement])),
                "latent_rel_error_max": max(a.latent_rel_error for a in self.agreement)}

    def to_json(self) -> dict:
        return dict(asdict(self), summary=self.summary())


def read_prompt_file(path: Path | None, count: int | None = None) -> tuple[str, ...]:
    """Prompts from a UTF-8 file (one per line, # comments); the default file when None."""
    from sdc.prompt_file import read_prompt_file

    prompts, _ = read_prompt_file(DEFAULT_PROMPTS if path is None else path, "--prompts ")
    return tuple(prompts[:count] if count else prompts)


def compare(bundle: Path, options: CompareOptions, work: Path | None = None, command: str = "",
            log: Callable[[str], None] = print) -> CompareResult:
    from sdc.bench.image_metrics import latent_rel_error, psnr, ssim
    from sdc.bench.prepare import machine_info, run_worker
    from sdc.runtime.bundle import read_manifest
    from sdc.runtime.loader import bundle_precisions

    t_start = time.perf_counter()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    have = bundle_precisions(manifest)
    for p in (options.precision, options.against):
        if p not in have:
            raise InputError(f"{bundle}: has no {p} artifacts (it has {', '.join(have)}); rebuild it with "
                             f"--precision {','.join(have + [p])}")
    if options.steps < 1 or not options.seeds or not options.prompts:
        raise InputError("--steps must be >= 1, with at least one prompt and one seed")
    d = manifest["defaults"]
    threads = options.threads or len(__import__("os").sched_getaffinity(0))
    machine = asdict(machine_info())
    folder = Path(work) if work else Path(tempfile.mkdtemp(prefix="sdc-compare-"))
    base = dict(kind="generate", bundle=str(bundle), prompts=list(options.prompts), seeds=list(options.seeds),
                steps=options.steps, guidance=options.guidance, height=options.height or d["height"],
                width=options.width or d["width"])
    variants, outputs = [], []
    for label, precision, target in (("variant", options.precision, options.target),
                                     ("baseline", options.against, options.against_target)):
        name = f"{precision}" + (f"-{target}" if target else "")
        log(f"generating {len(options.prompts) * len(options.seeds)} image(s) with {name} "
            f"({options.steps} steps, {base['width']}x{base['height']})")
        out = folder / f"{label}-{name}.npz"
        r = run_worker(dict(base, precision=precision, target=target, outputs=str(out)), folder, f"{label}-{name}",
                       threads)
        v = VariantResult(label=name, precision=precision, status=r.get("status", "failed"), reason=r.get("reason", ""),
                          peak_rss_bytes=r.get("peak_rss_bytes", 0))
        if v.status == "ok":
            v.seconds_per_image = statistics.median(r["times"])
            v.unet_step_seconds = statistics.median(r["unet_step_seconds"])
            v.load_seconds = r["load_seconds"]
            v.artifacts = r["artifacts"]
            v.artifact_bytes = _bytes_of(manifest, r["artifacts"])
            with np.load(out) as z:
                outputs.append({k: z[k] for k in z.files})
            v.adherence = adherence(options.prompts, options.seeds, outputs[-1]["images"])
        variants.append(v)
    agreement = []
    if len(outputs) == 2:
        (a, b), i = outputs, 0
        for prompt in options.prompts:
            for seed in options.seeds:
                agreement.append(Agreement(prompt, seed, psnr(a["images"][i], b["images"][i]),
                                           ssim(a["images"][i], b["images"][i]),
                                           latent_rel_error(a["latents"][i], b["latents"][i])))
                i += 1
    machine["load_after"] = __import__("os").getloadavg()
    return CompareResult(str(bundle), command, options, machine, variants, agreement,
                         time.perf_counter() - t_start)


def adherence(prompts: tuple[str, ...], seeds: tuple[int, ...], images: np.ndarray) -> float | None:
    """Fraction of images (prompt-major, [0, 1] floats) that show what their prompt asks for, when every prompt is
    in the shape world of the shipped model (sdc.eval.world); None otherwise: the meaning of other prompts cannot
    be read back by a program."""
    from sdc.errors import InputError
    from sdc.eval import scorer, world

    try:
        parsed = [world.parse_prompt(p) for p in prompts]
    except InputError:
        return None
    wanted = [p for p in parsed for _ in seeds]
    return float(np.mean([scorer.score(img, p).passed for img, p in zip(images, wanted)]))


def _bytes_of(manifest: dict, artifacts: dict) -> int:
    """Bytes of the files the chosen artifacts read (shared weight files once)."""
    files = manifest["files"]
    paths: set[str] = set()
    for name, info in artifacts.items():
        art = next(a for a in manifest["submodels"][name]["artifacts"] if a["path"] == info["path"])
        paths.update([art["path"], *art.get("data_paths", [])])
    return sum(files[p]["bytes"] for p in paths if p in files)
