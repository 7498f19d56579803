"""Reads safetensors weights (single-file or sharded; fp32/fp16/bf16) and assigns them to Paddle modules.

Paddle modules in sdc name their parameters exactly as diffusers does, so assignment is a lookup
plus three known translations: Linear weights are transposed (Paddle stores [in, out]), CLIP keys
may carry a `text_model.` prefix, and old VAE checkpoints name attention `query/key/value/proj_attn`.
The reader is our own (a JSON header and raw little-endian buffers): numpy has no bfloat16, and
owning it lets a truncated file fail with a message instead of a crash.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from sdc.errors import PickleRefusedError, WeightsError

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 on read
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def find_weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """The safetensors files holding one submodel's weights, in shard order.

    Variant files (`*.fp16.safetensors`) are used only when no plain file exists.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: weight folder not found (the model folder is incomplete)")
    indexes = sorted(p for p in folder.glob("*.safetensors.index.json") if ".fp16." not in p.name)
    indexes = indexes or sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index = indexes[0]
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WeightsError(f"{index}: not a valid safetensors index ({e}); restore it from the checkpoint")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise WeightsError(f"{index}: shard files missing: {', '.join(missing)}; download them too")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    plain = [p for p in files if p.name.count(".") == 1]
    if plain or files:
        return plain or files[:1]
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise PickleRefusedError(
            f"{pickles[0]}: pickle weights can run arbitrary code and are not loaded by default; "
            "convert them to safetensors (diffusers: pipe.save_pretrained(dir, safe_serialization=True)) "
            "or pass --allow-pickle if you trust the file"
        )
    if pickles:
        return pickles
    raise WeightsError(f"{folder}: no *.safetensors weights found; the model folder is incomplete")


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes are in a safetensors file (read them with `read_ref`)."""

    path: Path
    dtype: str  # safetensors name: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def safetensors_refs(path: Path) -> dict[str, TensorRef]:
    """Every tensor of a safetensors file by name, from its header (checked against the file's size)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: file is truncated ({size} bytes); download it again")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 2**20):
            raise WeightsError(f"{path}: not a safetensors file or truncated (header of {n} bytes); download it again")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WeightsError(f"{path}: corrupt safetensors header; download it again")
    header.pop("__metadata__", None)
    data_start = 8 + n
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if data_start + end > size:
        raise WeightsError(
            f"{path}: file is truncated ({size} bytes, header says {data_start + end}); download it again"
        )
    refs = {}
    for key, info in header.items():
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise WeightsError(f"{path}: tensor {key} has unsupported dtype {info.get('dtype')}")
        a, b = (int(x) for x in info["data_offsets"])
        shape = tuple(int(d) for d in info["shape"])
        if (b - a) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise WeightsError(f"{path}: tensor {key} has {b - a} bytes for shape {list(shape)}; file is corrupt")
        refs[key] = TensorRef(path, info["dtype"], shape, data_start + a, data_start + b)
    return refs


def read_ref(ref: TensorRef, widen: bool = True) -> np.ndarray:
    """One tensor, memory-mapped; BF16 widened to float32 unless `widen` is False (then uint16 bit patterns)."""
    arr = np.memmap(ref.path, dtype=_DTYPES[ref.dtype], mode="r", offset=ref.start, shape=ref.shape) \
        if ref.end > ref.start else np.zeros(ref.shape, _DTYPES[ref.dtype])
    return widen_bf16(arr) if ref.dtype == "BF16" and widen else arr


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) as the float32 values they are: exact."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def _read_safetensors(path: Path, want: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    return {key: read_ref(ref) for key, ref in safetensors_refs(path).items() if want is None or want(key)}


def _read_pickle(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch  # only on explicit opt-in
    except ImportError:
        raise WeightsError(f"{path}: loading pickle weights needs torch installed; convert to safetensors instead")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def read_weights(files: Iterable[Path], want: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """The tensors of the given files by name, all or those `want(name)` accepts (arrays may be memory-mapped;
    floats keep their stored dtype, except bf16, widened to float32)."""
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        path = Path(path)
        if path.suffix in PICKLE_SUFFIXES:
            part = {k: v for k, v in _read_pickle(path).items() if want is None or want(k)}
        else:
            part = _read_safetensors(path, want)
        tensors.update(part)
    return tensors


def canonical_key(key: str) -> str:
    """Map checkpoint naming variants onto diffusers' current names."""
    if key.startswith("text_model."):
        key = key[len("text_model.") :]
    if key == "encoder.embed_tokens.weight":  # T5: tied to shared.weight (checkpoints store either or both)
        return "shared.weight"
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] in _LEGACY_VAE_ATTENTION and ".attentions." in key:
        parts[-2] = _LEGACY_VAE_ATTENTION[parts[-2]]
        key = ".".join(parts)
    return key


def assign_weights(
    layer,
    tensors: dict[str, np.ndarray],
    source: str,
    ignore: Callable[[str], bool] = lambda k: False,
    dtype: str = "float32",
) -> None:
    """Copy `tensors` into `layer`'s parameters; raise one WeightsError listing every problem.

    `ignore(key)` marks checkpoint keys that belong to another submodel (e.g. the decoder half of
    the VAE when loading the encoder) or are non-parameter buffers.
    """
    import paddle

    linear = {f"{p}.weight" for p, sub in layer.named_sublayers() if isinstance(sub, paddle.nn.Linear)}
    state = layer.state_dict()
    by_key = {}
    for key in tensors:
        ck = canonical_key(key)
        if ck.endswith("position_ids") or ignore(ck):
            continue
        by_key[ck] = key
    missing = [k for k in state if k not in by_key]
    unexpected = [by_key[k] for k in by_key if k not in state]
    mismatched = []
    for name, param in state.items():
        if name not in by_key:
            continue
        arr = tensors[by_key[name]]
        want = tuple(param.shape)
        if name in linear and arr.ndim == 4 and arr.shape[2:] == (1, 1):
            arr = arr[:, :, 0, 0]  # old VAE checkpoints store attention projections as 1x1 convs
        if name in linear and arr.ndim == 2:
            arr = arr.T
        if tuple(arr.shape) != want:
            mismatched.append(f"{by_key[name]} {list(arr.shape)} (model expects {list(want)})")
            continue
        param.set_value(np.ascontiguousarray(arr, dtype=np.dtype(dtype)))
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_short(mismatched)}")
    if problems:
        raise WeightsError(f"{source}: weights do not match config.json: " + "; ".join(problems))


def _short(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def weights_sha256(files: Iterable[Path]) -> str:
    """Content hash of weight files (streamed), for the manifest's source record and engine cache keys."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()
