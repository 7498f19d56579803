"""Writing a submodel's ONNX artifacts: the portable graph and target-tuned graphs that share its weights.

A target-tuned graph (fused attention, GELU, ...) reads mostly the same weights as the portable one.
Rather than shipping a second multi-GB copy, its initializers that are byte-identical to a portable
initializer point into the portable graph's external data file; only tensors a pass created (a packed
QKV weight, a folded constant) are stored again. Identity is checked by content hash, so a pass that
rewrites a weight in place can never be served stale bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DATA_SUFFIX = ".data"
MIN_EXTERNAL_BYTES = 1024  # smaller tensors stay inline in the graph file


def data_file_of(path: Path) -> Path:
    return path.with_name(path.name + DATA_SUFFIX)


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def weight_digests(model) -> dict[str, tuple[str, int]]:
    """name -> (content digest, byte length) of every raw-data initializer; call before saving externally."""
    return {t.name: (_digest(t.raw_data), len(t.raw_data)) for t in model.graph.initializer if t.HasField("raw_data")}


def save_onnx(model, path: Path, external: bool) -> str | None:
    """Write the model; weights go to `<name>.data` beside it when `external`. Returns the data file name.

    Saving externally moves the tensors' bytes out of `model` (onnx clears raw_data), leaving
    location/offset/length records that `save_sharing` reuses.
    """
    import onnx

    data = data_file_of(path)
    if data.exists():
        data.unlink()  # onnx.save_model appends to an existing data file
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=MIN_EXTERNAL_BYTES)
        return data.name
    onnx.save_model(model, str(path))
    return None


def save_sharing(model, path: Path, portable, portable_digests: dict[str, tuple[str, int]]) -> tuple[str | None, int]:
    """Save a target-tuned `model`, pointing identical initializers at the (already saved) portable data.

    Returns (own data file name or None, bytes shared). Both graphs must live in the same folder.
    """
    from onnx import TensorProto

    shared_ref = {}
    for t in portable.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            shared_ref[t.name] = [(e.key, e.value) for e in t.external_data]
    shared = 0
    own_large = 0
    for t in model.graph.initializer:
        if not t.HasField("raw_data"):
            continue
        ref = shared_ref.get(t.name)
        if ref is not None and portable_digests.get(t.name) == (_digest(t.raw_data), len(t.raw_data)):
            shared += len(t.raw_data)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in ref:
                entry = t.external_data.add()
                entry.key, entry.value = k, v
        elif len(t.raw_data) >= MIN_EXTERNAL_BYTES:
            own_large += len(t.raw_data)
    data = save_onnx(model, path, external=own_large > 0 and shared > 0)
    return data, shared
