"""Calibration data from the pipeline itself: prompts through the fp32 artifacts, every submodel's inputs captured.

INT8 scales must cover what each submodel sees when it generates, so the inputs come from real
sampling runs of the bundle's own fp32 graphs (runtime pipeline, default scheduler): the UNet's
inputs at every step (every noise level, both halves of classifier-free guidance), the text
encoder's token ids for every prompt of the file, the VAE decoder's final latents and the VAE
encoder's decoded images. One extra, shorter run, with a prompt and seed no calibration run used,
is held out: reduced-precision artifacts are validated on it against the fp32 graph.

While the calibration runs go, the min and max of every float value of the graphs being run are
observed (sdc.compile.ranges): those are the INT8 scales' ranges and the fp16 islands' measurements,
so no graph has to run the calibration inputs a second time.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sdc.errors import InputError

DEFAULT_PROMPTS = Path(__file__).parent / "data" / "calibration_prompts.txt"
DEFAULT_SAMPLES = 8  # UNet inputs (one run of 8 steps); docs/PERFORMANCE.md "How many calibration samples": no gain measured past 8
MIN_SAMPLES = 4
STEPS_PER_RUN = 8  # denoising steps of each calibration run: ceil(samples / 8) runs, each a new prompt
HOLDOUT_STEPS = 4  # the held-out run: validation inputs spread over the schedule
GUIDANCE = 7.5
TEXT_BATCH = 8
# Submodels a calibration run needs, per family (an SDXL refiner has only the second encoder, and
# refines images, so it needs the VAE encoder too).
PIPELINE_SUBMODELS = {"sd": ("text_encoder", "unet", "vae_decoder"), "sdxl": ("text_encoder_2", "unet", "vae_decoder")}


REFINER_STRENGTH = 0.8


def needed_submodels(index) -> tuple[str, ...]:
    """The submodels a calibration generation runs for this pipeline folder (sdc.graphs.configs.ModelIndex)."""
    needed = PIPELINE_SUBMODELS[index.family]
    if index.family == "sdxl" and index.has("text_encoder"):
        needed = ("text_encoder",) + needed
    if index.requires_aesthetics_score:
        needed += ("vae_encoder",)
    return needed


def _picture(height: int, width: int) -> np.ndarray:
    """A smooth RGB test picture in [0, 1] (NHWC): what a refiner's calibration runs refine."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([0.5 + 0.5 * np.sin(x / 23.0) * np.cos(y / 31.0), (x + y) / (height + width),
                    0.5 + 0.4 * np.cos((x - y) / 17.0)], axis=-1)
    return np.clip(img, 0.0, 1.0)[None].astype(np.float32)


def read_prompts(path: Path | None) -> tuple[list[str], str, str]:
    """(prompts, sha256 of the file, its name for the record); one-line errors for a bad file."""
    from sdc.prompt_file import read_prompt_file

    label = "sdc default prompts" if path is None else str(path)
    prompts, raw = read_prompt_file(DEFAULT_PROMPTS if path is None else path, "--calibration-prompts ")
    return prompts, hashlib.sha256(raw).hexdigest(), label


def check_samples(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_SAMPLES:
        raise InputError(f"--calibration-samples {n}: too few; INT8 scales need at least {MIN_SAMPLES} UNet inputs "
                         f"(default {DEFAULT_SAMPLES})")
    return n


@dataclass
class CalibrationSet:
    """Captured inputs per submodel: `calibration` for the scales, `holdout` for validation."""

    prompts_source: str
    prompts_sha256: str
    prompts_count: int
    samples: int  # UNet inputs: the samples asked for, rounded up to whole runs
    runs: int
    steps_per_run: int
    height: int
    width: int
    scheduler: str
    timesteps: list[float]
    calibration: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    holdout: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    ranges: dict[str, object] = field(default_factory=dict)  # submodel -> sdc.compile.ranges.Ranges of its graph
    # (submodel, graph path) -> that graph's outputs on `holdout`: the held-out run recorded the outputs of
    # the graphs it ran, and every reduced-precision artifact is compared with them (a real UNet's
    # fp32 graph would otherwise run the held-out inputs again for each artifact and each check).
    holdout_outputs: dict[tuple[str, str], list[dict[str, np.ndarray]]] = field(default_factory=dict)
    seconds: float = 0.0

    def reference_outputs(self, submodel: str, graph: Path, spec: dict) -> list[dict[str, np.ndarray]]:
        """The fp32 `graph`'s outputs on the held-out inputs of `submodel` (recorded, or run once and kept)."""
        key = (submodel, str(graph))
        if key not in self.holdout_outputs:
            from sdc.runtime.models import OnnxModel

            model = OnnxModel(graph, spec, ["CPUExecutionProvider"])
            self.holdout_outputs[key] = [model(**c) for c in self.holdout.get(submodel, [])]
        return self.holdout_outputs[key]

    def record(self) -> dict:
        """What the manifest keeps about the calibration (no arrays)."""
        return {
            "prompts": {"source": self.prompts_source, "sha256": self.prompts_sha256, "count": self.prompts_count},
            "samples": {k: len(v) for k, v in self.calibration.items()},
            "unet_samples": self.samples, "runs": self.runs, "steps_per_run": self.steps_per_run,
            "size": [self.height, self.width], "scheduler": self.scheduler, "guidance_scale": GUIDANCE,
            "timesteps": sorted({round(t, 3) for t in self.timesteps}, reverse=True),
            "holdout": {k: len(v) for k, v in self.holdout.items()},
        }


class _Recorder:
    """A submodel that keeps a copy of every input it is called with and, when it runs an observed
    graph (sdc.compile.ranges), folds the min/max of its values into `ranges` (calibration runs only)."""

    def __init__(self, session, outputs: list[str], extra: list[str], store: list, ranges=None):
        self.session, self.outputs, self.extra, self.store, self.ranges = session, outputs, extra, store, ranges
        self.calibrating = True
        self.returned: list[dict[str, np.ndarray]] = []  # outputs of the held-out calls

    def __call__(self, **inputs):
        self.store.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        wanted = self.outputs + (self.extra if self.calibrating and self.ranges is not None else [])
        values = self.session.run(wanted, inputs)
        if len(values) > len(self.outputs):
            self.ranges.update(self.extra, values[len(self.outputs):])
        out = dict(zip(self.outputs, values[:len(self.outputs)]))
        if not self.calibrating:
            self.returned.append({k: np.array(v, copy=True) for k, v in out.items()})
        return out


def capture(model_dir: Path, artifacts: dict[str, Path], specs: dict[str, dict], prompts_file: Path | None,
            samples: int, log: Callable[[str], None] = print, observe: tuple[str, ...] = (),
            size: tuple[int, int] | None = None) -> CalibrationSet:
    """Run calibration generations through the fp32 `artifacts` ({submodel: path}); see the module doc.

    For the submodels in `observe`, the min/max of every float value of their graph is kept too. `size`:
    (height, width) of the generations (a build's profile's optimum; default: the model's native size).
    """
    import contextlib

    from sdc.compile.ranges import Ranges, observed_session
    from sdc.graphs.configs import load_model_index, read_json
    from sdc.runtime.loader import load_tokenizers, make_pipeline
    from sdc.runtime.models import OnnxModel
    from sdc.runtime.pipeline import PipelineConfig

    t0 = time.perf_counter()
    prompts, sha, label = read_prompts(prompts_file)
    samples = check_samples(samples)
    index = load_model_index(model_dir)
    missing = [n for n in needed_submodels(index) if n not in artifacts]
    if missing:
        raise InputError(f"INT8 calibration runs the whole pipeline, and this build lacks {', '.join(missing)}; "
                         f"drop --only or build only fp32/fp16/bf16/w8")
    stores: dict[str, list] = {n: [] for n in artifacts}
    stack = contextlib.ExitStack()
    models, ranges = {}, {}
    for n, p in artifacts.items():
        outputs = [t["name"] for t in specs[n]["outputs"]]
        if n in observe:
            session, _, extra = stack.enter_context(observed_session(Path(p)))
            ranges[n] = Ranges(str(p))
        else:
            session, extra = OnnxModel(p, specs[n], ["CPUExecutionProvider"]).session, []
        models[n] = _Recorder(session, outputs, extra, stores[n], ranges.get(n))
    config = PipelineConfig.from_diffusers(model_dir)
    if size is not None:
        import dataclasses

        config = dataclasses.replace(config, default_height=size[0], default_width=size[1])
    tokenizers = load_tokenizers(model_dir, index.family, models)
    pipe = make_pipeline(index.family, models, tokenizers, read_json(model_dir / "scheduler" / "scheduler_config.json"),
                         config)
    # A refiner refines: its runs start from a procedural picture (strength REFINER_STRENGTH), not from noise.
    refine = {"image": _picture(config.default_height, config.default_width), "strength": REFINER_STRENGTH} \
        if config.requires_aesthetics_score else {}
    runs = math.ceil(samples / STEPS_PER_RUN)  # whole sampling runs: the samples round up to them
    result = CalibrationSet(label, sha, len(prompts), runs * STEPS_PER_RUN, runs, STEPS_PER_RUN, config.default_height,
                            config.default_width, pipe.make_scheduler().__class__.__name__, [])
    timesteps: list[float] = []
    for r in range(runs + 1):  # the last run is held out
        held = r == runs
        for m in models.values():
            m.calibrating = not held
        marks = {n: len(s) for n, s in stores.items()}
        # Held-out prompt: the one after the last calibration prompt, so it differs whenever the file has more.
        prompt = prompts[r % len(prompts)]
        images = pipe(prompt, negative_prompt="", num_inference_steps=HOLDOUT_STEPS if held else STEPS_PER_RUN,
                      guidance_scale=GUIDANCE, seed=10_000 + r, output_type="np", **refine,
                      callback=lambda i, n, t, lat: timesteps.append(float(t)) if not held else None)
        if "vae_encoder" in models:
            models["vae_encoder"](sample=np.ascontiguousarray(images.transpose(0, 3, 1, 2) * 2 - 1, dtype=np.float32))
        log(f"calibration run {r + 1}/{runs + 1}{' (held out)' if held else ''}: {prompt[:60]!r}")
        if held:
            for n, s in stores.items():
                result.holdout[n] = s[marks[n]:]
                del s[marks[n]:]
                result.holdout_outputs[(n, str(artifacts[n]))] = models[n].returned
    # The text encoders see every prompt (they are cheap), in batches as the pipeline sends them.
    for name, tokenizer in tokenizers.items():
        models[name].calibrating = True
        for i in range(0, len(prompts), TEXT_BATCH):
            batch = prompts[i:i + TEXT_BATCH]
            models[name](input_ids=np.asarray(tokenizer([""] + batch), dtype=np.int64))
    stack.close()
    for n, s in stores.items():
        result.calibration[n] = s
    result.samples = len(result.calibration.get("unet", []))  # PNDM calls the UNet once more than its steps
    result.timesteps = timesteps
    result.ranges = ranges
    result.seconds = time.perf_counter() - t0
    return result
