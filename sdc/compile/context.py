"""The typed build context that stages pass along: options in, per-submodel results accumulated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdc.graphs.configs import ModelIndex
from sdc.graphs.specs import SubmodelSpec


@dataclass(frozen=True)
class BuildOptions:
    opset: int = 17
    fail_on_validation: bool = True  # False downgrades an over-tolerance artifact to a loud warning
    allow_pickle: bool = False
    submodels: tuple[str, ...] | None = None  # None: every submodel the pipeline has
    external_data_threshold: int = 1 << 30  # bytes of weights above which they go to model.onnx.data
    passes: bool = True  # False: ship paddle2onnx's graph as exported (benchmarks compare both)
    # Extra target-tuned artifacts beside the portable one; the runtime picks by provider.
    targets: tuple[str, ...] = ("ort-cpu",)
    debug_passes: bool = False  # log why each fusion matched nothing
    # Numeric precisions to ship (sdc.runtime.precisions); the first is the bundle's default.
    precisions: tuple[str, ...] = ("fp32",)
    calibration_prompts: Path | None = None  # None: sdc's default prompt file
    calibration_samples: int = 8  # UNet inputs captured for INT8 scales (sdc.compile.calibrate)
    # Depth-tied graph + weights streamed from the checkpoint (sdc.compile.streamed): auto | on | off
    stream_weights: str = "auto"
    profile: Any = None  # sdc.profiles.Profile: the sizes the bundle serves; validation runs at its corners

    @property
    def precision_stage(self) -> bool:
        """Whether the build runs the precision stage: a precision other than fp32 is shipped, or fp32 is not."""
        return set(self.precisions) != {"fp32"}


@dataclass
class Validation:
    """One artifact's error against the Paddle module, over every sample shape."""

    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    shapes: list[dict[str, int]]
    per_output: dict[str, float]
    passed: bool
    where: str = "onnxruntime CPUExecutionProvider"  # what executed the artifact
    against: str = "paddle"  # the reference the errors are measured against
    # Reduced precisions: the same measure on held-out real pipeline inputs, against the fp32 artifact.
    holdout: dict | None = None
    judged_on: str = "every case"

    def to_json(self) -> dict:
        out = {
            "max_abs": self.max_abs, "max_rel": self.max_rel, "atol": self.atol, "rtol": self.rtol,
            "shapes": self.shapes, "per_output": self.per_output, "passed": self.passed,
            "where": self.where, "against": self.against, "judged_on": self.judged_on,
        }
        if self.holdout is not None:
            out["holdout"] = self.holdout
        return out


@dataclass
class Artifact:
    target: str  # portable | ort-cpu | ort-cuda | tensorrt
    precision: str  # fp32 | fp16 | int8
    path: str  # relative to the bundle root
    data_paths: list[str] = field(default_factory=list)  # external weight files it reads (may be shared)
    passes: dict[str, dict[str, int]] = field(default_factory=dict)  # pass name -> what it changed
    validation: Validation | None = None
    # fp16/bf16: the fp32 islands and why; int8/w8: calibration, quantized op counts, excluded nodes.
    precision_record: dict = field(default_factory=dict)
    # Streamed weights (sdc.compile.streamed): storage dtype, blocks, what was validated how
    weights: dict = field(default_factory=dict)


@dataclass
class SubmodelBuild:
    name: str
    spec: SubmodelSpec
    config: Any
    layer: Any = None  # the Paddle module (dygraph), reference for validation
    program_prefix: Path | None = None  # static program written by trace
    weight_bytes: int = 0  # parameter bytes attached to the exported graph
    program_passes: dict[str, dict[str, int]] = field(default_factory=dict)  # rewrites of the Paddle program
    references: list = field(default_factory=list)  # [(dims, inputs, paddle outputs)] per sample shape
    artifacts: list[Artifact] = field(default_factory=list)
    ties: tuple = ()  # depth-tied runs of blocks (sdc.graphs.tied) when the weights are streamed
    profile_dims: dict = field(default_factory=dict)  # dim -> sdc.profiles.Range under the build's profile
    reference_floor: float | None = None  # depth-tied: max |float32 module - float64 module| on the references
    linear_keys: tuple[str, ...] = ()  # the module's Linear weights (stored transposed), for streaming
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class BuildContext:
    model_dir: Path
    out: Path  # final bundle path
    work: Path  # temporary bundle directory, renamed to `out` at the end
    scratch: Path  # traced programs and other intermediates, not shipped
    index: ModelIndex
    options: BuildOptions
    submodels: dict[str, SubmodelBuild] = field(default_factory=dict)
    weights_sha256: str = ""
    warnings: list[str] = field(default_factory=list)
    calibration: Any = None  # sdc.compile.calibrate.CalibrationSet, captured once per build when needed
    log: Callable[[str], None] = print
