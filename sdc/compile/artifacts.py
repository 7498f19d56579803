"""Writing a submodel's ONNX artifacts: the portable graph and target-tuned graphs that share its weights.

A target-tuned graph (fused attention, GELU, ...) reads mostly the same weights as the portable one.
Rather than shipping a second multi-GB copy, its initializers that are byte-identical to a portable
initializer point into the portable graph's external data file; only tensors a pass created (a packed
QKV weight, a folded constant) are stored again. Identity is checked by content hash, so a pass that
rewrites a weight in place can never be served stale bytes.

Past the external-data threshold the graphs never hold their weights in memory at all: the export is
saved once to scratch, the passes run on references into that file (onnx-ir reads the few tensors a
pass needs), and `stream_save` copies the bytes into the bundle in chunks (SDXL's 10 GB fp32 UNet
would otherwise be in memory twice).
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


# ----------------------------------------------------------------------------- models larger than memory allows twice

ALIGN = 4096  # external tensors start on page boundaries, so ONNX Runtime can memory-map them
CHUNK = 64 << 20


def external_ref(t) -> tuple[str, int, int] | None:
    """(location, offset, length) of an external initializer, else None."""
    from onnx import TensorProto

    if t.data_location != TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in t.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def read_float_initializer(t, base_dir: Path):
    """An fp32 initializer's values: from its own bytes, or only its slice of the external data file."""
    import numpy as np
    from onnx import numpy_helper

    ref = external_ref(t)
    if ref is None:
        return numpy_helper.to_array(t)
    location, offset, length = ref
    return np.fromfile(Path(base_dir) / location, dtype=np.float32, count=length // 4, offset=offset).reshape(
        tuple(t.dims))


def _point(t, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def stream_save(model, path: Path, base_dir: Path, shared: dict | None = None) -> tuple[str | None, dict, int]:
    """Save `model`, whose initializers are inline bytes or external references resolved against `base_dir`,
    copying every referenced tensor into `<path>.data` in chunks (never the whole model in memory).

    With `shared` (what an earlier stream_save of the portable graph returned) a reference it already
    copied points into that graph's data file instead (both graphs share a folder): an initializer that is still a
    reference was never touched by a pass, so its bytes are the portable graph's by construction.
    Returns (data file name or None, {source reference: new reference}, bytes shared).
    """
    import onnx

    data = data_file_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    moved: dict[tuple[str, int, int], tuple[str, int, int]] = {}
    handles: dict[str, object] = {}
    shared_bytes = 0
    out = None
    try:
        for t in model.graph.initializer:
            ref = external_ref(t)
            if ref is not None and shared and ref in shared:
                _point(t, *shared[ref])
                shared_bytes += ref[2]
                continue
            if ref is None and (not t.HasField("raw_data") or len(t.raw_data) < MIN_EXTERNAL_BYTES):
                continue  # small tensors stay inline
            if out is None:
                out = open(data, "wb")
            pad = -out.tell() % ALIGN
            out.write(b"\0" * pad)
            offset = out.tell()
            if ref is None:
                length = len(t.raw_data)
                out.write(t.raw_data)
            else:
                src = str(Path(base_dir) / ref[0])
                if src not in handles:
                    handles[src] = open(src, "rb")
                f, left = handles[src], ref[2]
                f.seek(ref[1])
                while left:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        raise OSError(f"{src}: external data ends before offset {ref[1]} + {ref[2]}")
                    out.write(chunk)
                    left -= len(chunk)
                length = ref[2]
                moved[ref] = (data.name, offset, length)
            _point(t, data.name, offset, length)
    finally:
        for f in handles.values():
            f.close()
        if out is not None:
            out.close()
    onnx.save_model(model, str(path))
    return (data.name if out is not None else None), moved, shared_bytes
