"""Checks that a bundle built with streamed weights holds its checkpoint's tensors, every block's, byte for byte.

    .venv/bin/python scripts/check_streamed_bundle.py out/flux-full.bundle out/flux-full

For each artifact whose manifest entry has a `weights` record (sdc/compile/streamed.py): the graph loads
(protobuf, without its data), every external initializer lies inside a data file listed for the artifact
and has the length its shape and type need, and every initializer named like a checkpoint tensor equals
that tensor (Linear weights transposed: the graph reads them as MatMul's right-hand side). One tensor at
a time, memory-mapped: this is the check a full-size graph that cannot run on this machine can have.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ITEMSIZE = {1: 4, 10: 2, 16: 2, 7: 8, 6: 4, 9: 1, 2: 1, 3: 1}


def check(bundle: Path, model_dir: Path) -> int:
    import onnx

    from sdc.graphs import folder_of
    from sdc.graphs.weights import canonical_key, find_weight_files, read_ref, safetensors_refs

    manifest = json.loads((bundle / "manifest.json").read_text())
    problems = 0
    for name, sub in manifest["submodels"].items():
        refs = {}
        for f in find_weight_files(model_dir / folder_of(name)):
            refs.update({canonical_key(k): r for k, r in safetensors_refs(f).items()})
        for art in sub["artifacts"]:
            if not art.get("weights"):
                continue
            t0 = time.perf_counter()
            path = bundle / art["path"]
            graph = onnx.load(str(path), load_external_data=False).graph
            readers = {}
            for node in graph.node:
                for i in node.input:
                    readers.setdefault(i, node)
            allowed = {(bundle / d).resolve() for d in art["data_paths"]}
            compared = nbytes = 0
            for init in graph.initializer:
                if init.data_location != onnx.TensorProto.EXTERNAL:
                    continue
                ext = {e.key: e.value for e in init.external_data}
                data = (path.parent / ext["location"]).resolve()
                offset, length = int(ext.get("offset", 0)), int(ext["length"])
                need = int(np.prod(init.dims)) * ITEMSIZE[init.data_type]
                if data not in allowed or offset + length > data.stat().st_size or length != need:
                    print(f"  {name} {art['target']}: {init.name}: {ext} is outside its listed data or the wrong size")
                    problems += 1
                    continue
                ref = refs.get(init.name)
                if ref is None:
                    continue
                src = np.asarray(read_ref(ref, widen=False))
                reader = readers.get(init.name)
                if reader is not None and reader.op_type == "Cast":
                    reader = readers.get(reader.output[0], reader)
                if src.ndim == 2 and reader is not None and reader.op_type in ("MatMul", "Gemm"):
                    src = src.T
                got = np.memmap(data, dtype=src.dtype, mode="r", offset=offset, shape=src.shape)
                if not np.array_equal(np.asarray(got), src):
                    print(f"  {name} {art['target']}: {init.name} differs from the checkpoint")
                    problems += 1
                compared += 1
                nbytes += length
            print(f"{name} {art['target']}/{art['precision']}: {compared} tensors ({nbytes / 2**30:.2f} GiB) equal to the "
                  f"checkpoint, {len(graph.node)} nodes, {time.perf_counter() - t0:.0f}s")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("model_dir", type=Path)
    args = ap.parse_args()
    problems = check(args.bundle, args.model_dir)
    print("ok" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
