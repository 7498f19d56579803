"""Streamed weights: full-size graphs built from a depth-tied module, every block's weights streamed in at the end.

A submodel whose fp32 weights would not fit in memory (a real Flux transformer: 47.6 GB; T5-XXL: 19 GB)
is loaded depth-tied (sdc.graphs.tied): one layer per run of identical blocks, called once per block.
The build traces, exports, optimizes and validates that module as usual: its graph is the full-depth
graph, each tied weight read once per block. This module does the two things that make it the real
model's graph:
- `tag_uses`, right after export while the nodes are still in forward order: each node that reads a
  tied weight gets its block in its name (`<node>@<run>.<index>`), so that later passes may reorder or
  rewrite around it without the block of any weight read becoming a guess;
- `stream_stage`, after validation: every artifact of the submodel gets one initializer per block
  (named by its checkpoint key, so TensorRT refit and Netron see the real names), and every
  checkpoint-backed initializer's bytes are copied from the safetensors files into the artifact's
  data file, one tensor at a time, in the checkpoint's own dtype. A bf16 checkpoint is stored bf16
  and cast to float32 in the graph: exactly the values the tied graph was validated with (bf16 ->
  float32 is exact), so nothing is rounded on the way. Target graphs point at the portable graph's
  data where the bytes are the same tensors.
A node reading a tied weight without a block tag (a pass replaced it, e.g. by packing q/k/v weights
into one) cannot be untied: the portable graph then fails the build, a target graph is dropped with a
note (the portable graph serves that target).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from sdc.compile.context import BuildContext, SubmodelBuild
from sdc.errors import ExportError
from sdc.graphs.tied import Tie
from sdc.passes.onnx.cleanup import BLOCK_TAG as TAG
ALIGN = 4096  # big tensors page-aligned (ONNX Runtime can map them), as sdc.compile.artifacts.stream_save does
SMALL_ALIGN, SMALL = 64, 1 << 16
CAST_SUFFIX = "__float"
STORAGE = {"F32": 1, "F16": 10, "BF16": 16}  # safetensors dtype -> TensorProto data type
MEMORY_SHARE = 0.5  # `auto` streams a submodel whose fp32 weights exceed this share of physical memory


def fp32_bytes(folder: Path) -> int:
    """Bytes of a submodel's checkpoint tensors once widened to float32 (read from the headers only)."""
    from sdc.graphs.weights import find_weight_files, safetensors_refs

    total = 0
    for f in find_weight_files(folder):
        if f.suffix == ".safetensors":
            total += sum(int(np.prod(r.shape)) * 4 for r in safetensors_refs(f).values())
    return total


def physical_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return 16 << 30


def should_stream(ctx: BuildContext, sub: SubmodelBuild) -> bool:
    """`--stream-weights on`: every submodel with repeated blocks; `auto`: those too big for memory in fp32."""
    from sdc.graphs import folder_of
    from sdc.graphs.tied import ties_for

    mode = ctx.options.stream_weights
    if mode == "off" or not ties_for(sub.name, sub.config):
        return False
    if mode == "on":
        return True
    need, have = fp32_bytes(ctx.model_dir / folder_of(sub.name)), physical_memory()
    if need > MEMORY_SHARE * have:
        ctx.log(f"  {sub.name}: {need / 2**30:.1f} GiB of fp32 weights on a {have / 2**30:.0f} GiB machine: "
                "built depth-tied, its weights streamed from the checkpoint (--stream-weights off to refuse)")
        return True
    return False


# ---------------------------------------------------------------- tags


def _tag_of(name: str) -> tuple[str, int] | None:
    if TAG not in name:
        return None
    root, _, index = name.rpartition(TAG)[2].rpartition(".")
    return (root, int(index)) if index.isdigit() else None


def tag_uses(model, ties: tuple[Tie, ...]) -> int:
    """Name every node that reads a tied weight after its block; call on the export, nodes in forward order."""
    from sdc.passes.onnx.float16 import name_nodes

    name_nodes(model)
    owner = {t.name: tie for t in model.graph.initializer for tie in ties if tie.owns(t.name)}
    uses: dict[str, int] = defaultdict(int)
    tagged = 0
    for node in model.graph.node:
        tags = set()
        for name in dict.fromkeys(i for i in node.input if i in owner):
            tie = owner[name]
            tags.add((tie.root, tie.start + uses[name]))
            uses[name] += 1
        if len(tags) > 1:
            raise ExportError(f"{node.name} reads tied weights of different blocks {sorted(tags)}; cannot untie it")
        if tags:
            root, index = tags.pop()
            node.name = f"{node.name}{TAG}{root}.{index}"
            tagged += 1
    for name, tie in owner.items():
        if uses[name] != tie.repeats:
            raise ExportError(f"the export reads tied weight {name} {uses[name]} times for {tie.repeats} blocks; "
                              "cannot untie it (build with --stream-weights off)")
    return tagged


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            out[name].append((node, i))
    return out


def _block_of(node, consumers: dict[str, list], limit: int = 64) -> tuple[str, int] | None:
    """A node's block: its tag, or for a node a pass made (a fused norm, a Cast) the block of the nearest
    tagged nodes downstream, when they all agree (a block's weights are read at its start, or feed its
    own projections, before any later block's). None when no unique answer is found."""
    tag = _tag_of(node.name)
    if tag is not None:
        return tag
    frontier, seen = [node], {id(node)}
    for _ in range(limit):
        found, nxt = set(), []
        for n in frontier:
            for out in n.output:
                for reader, _ in consumers.get(out, ()):
                    if id(reader) in seen:
                        continue
                    seen.add(id(reader))
                    t = _tag_of(reader.name)
                    (found.add(t) if t is not None else nxt.append(reader))
        if found:
            return found.pop() if len(found) == 1 else None
        if not nxt:
            return None
        frontier = nxt
    return None


def untie(model, ties: tuple[Tie, ...]) -> int:
    """Give every block its own initializers (headers only: the data is streamed afterwards); returns how many."""
    import onnx

    consumers = _consumers(model)
    owner = {t.name: tie for t in model.graph.initializer for tie in ties if tie.owns(t.name)}
    added = []
    for init in model.graph.initializer:
        tie = owner.get(init.name)
        if tie is None:
            continue
        seen = set()
        for node, i in consumers.get(init.name, ()):
            block = _block_of(node, consumers)
            if block is None or block[0] != tie.root:
                raise ExportError(f"node {node.name} ({node.op_type}) reads tied weight {init.name} but belongs to no "
                                  "block: a pass rewrote it")
            seen.add(block[1])
            node.input[i] = tie.untied(init.name, block[1])
        if seen != set(range(tie.start, tie.count)):
            raise ExportError(f"tied weight {init.name} is read by blocks {sorted(seen)}, expected {tie.start}.."
                              f"{tie.count - 1}: a pass merged repeated computations")
        for index in range(tie.start + 1, tie.count):
            copy = onnx.TensorProto(name=tie.untied(init.name, index), data_type=init.data_type)
            copy.dims.extend(init.dims)
            added.append(copy)
    model.graph.initializer.extend(added)
    return len(added)


# ---------------------------------------------------------------- streaming


class _Source:
    """The checkpoint tensors behind a submodel's initializers, with the layout the graph holds them in."""

    def __init__(self, ctx: BuildContext, sub: SubmodelBuild):
        from sdc.graphs import folder_of
        from sdc.graphs.weights import canonical_key, find_weight_files, safetensors_refs

        self.refs = {}
        for f in find_weight_files(ctx.model_dir / folder_of(sub.name)):
            self.refs.update({canonical_key(k): r for k, r in safetensors_refs(f).items()})
        # Paddle Linear weights are stored [in, out], the checkpoint's transposed; by key pattern (block
        # numbers as *), so that every block's key matches its tied entry's
        self.linear = {_pattern(k) for k in sub.linear_keys}

    def array(self, name: str, dims: tuple[int, ...]) -> np.ndarray | None:
        """The tensor as the graph holds it, in the checkpoint's dtype (bf16 as uint16 bits); None if not a weight."""
        from sdc.graphs.weights import read_ref

        ref = self.refs.get(name)
        if ref is None:
            return None
        arr = read_ref(ref, widen=False)
        if self._linear(name) and arr.ndim == 2:
            arr = arr.T
        if tuple(arr.shape) != tuple(dims):
            raise ExportError(f"{name}: checkpoint shape {list(ref.shape)} does not give the graph's {list(dims)}")
        return np.ascontiguousarray(arr)

    def _linear(self, name: str) -> bool:
        return _pattern(name) in self.linear


def _pattern(key: str) -> str:
    return ".".join("*" if p.isdigit() else p for p in key.split("."))


def _widen(arr: np.ndarray, storage: str) -> np.ndarray:
    from sdc.graphs.weights import widen_bf16

    return widen_bf16(arr) if storage == "BF16" else arr.astype(np.float32)


class _Writer:
    def __init__(self, path: Path):
        self.path, self.file, self.offset = path, open(path, "wb"), 0

    def put(self, raw: memoryview | bytes) -> tuple[int, int]:
        pad = (-self.offset) % (ALIGN if len(raw) >= SMALL else SMALL_ALIGN)
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        self.file.write(raw)
        self.offset += len(raw)
        return start, len(raw)

    def close(self) -> None:
        self.file.close()


def _point(init, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    init.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data"):
        init.ClearField(field)
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = init.external_data.add()
        e.key, e.value = k, v


def _cast_inputs(model, names: dict[str, int]) -> None:
    """Each low-precision weight in `names` (name -> storage type) feeds a Cast to float32 that its readers read."""
    import onnx

    if not names:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in names:
                node.input[i] = name + CAST_SUFFIX
    casts = [onnx.helper.make_node("Cast", [n], [n + CAST_SUFFIX], name=f"{n}/cast_to_float", to=1) for n in names]
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + nodes)


def stream_artifact(model, folder: Path, data_name: str, source: _Source, shared: dict | None = None,
                    check=None) -> tuple[dict, int, int]:
    """Write every initializer of `model` (untied) to `folder/data_name`, checkpoint tensors from `source`.

    `shared`: {name: (location, offset, length, data_type, is_weight)} already written for the portable graph (a
    target graph points there). `check(name) -> float32 array | None`: the value the tied graph was
    validated with, compared exactly with the streamed tensor. Returns (what this graph wrote, in
    `shared`'s format; bytes written; bytes shared). `check` also reads the tied graph's external constants.
    """
    from onnx import numpy_helper

    written, shared = {}, dict(shared or {})
    low: dict[str, int] = {}
    wrote = reused = 0
    writer = _Writer(folder / data_name)
    try:
        for init in model.graph.initializer:
            if init.name in shared and shared[init.name][4] and init.data_type == 1:  # the same checkpoint tensor
                location, offset, length, dtype, _ = shared[init.name]
                init.data_type = dtype
                _point(init, location, offset, length)
                reused += length
                if dtype != 1:
                    low[init.name] = dtype
                continue
            arr = source.array(init.name, tuple(init.dims))
            weight = arr is not None
            if arr is None:  # a constant of the graph (pass-made, or a buffer): kept as it is
                if init.data_location == 1:
                    value = check(init.name) if check is not None else None
                    if value is None:
                        raise ExportError(f"{init.name}: external constant the graph cannot read; cannot stream it")
                    raw = np.ascontiguousarray(value).tobytes()
                else:
                    raw = init.raw_data if init.HasField("raw_data") else numpy_helper.to_array(init).tobytes()
                    if len(raw) < 1024:
                        continue  # small constants stay inline
                dtype = init.data_type
            else:
                if init.data_type != 1:
                    raise ExportError(f"{init.name}: the graph holds it as type {init.data_type}; streaming writes "
                                      "float32 graphs' weights only")
                storage = source.refs[init.name].dtype
                if check is not None:
                    expected = check(init.name)
                    if expected is not None and not np.array_equal(expected, _widen(arr, storage)):
                        raise ExportError(f"{init.name}: the checkpoint tensor differs from the weight the graph "
                                          "was validated with (a pass changed it); cannot stream it")
                dtype = STORAGE[storage]
                raw = arr.view(np.uint8).reshape(-1).data
                if dtype != 1:
                    low[init.name] = dtype
            init.data_type = dtype
            offset, length = writer.put(raw)
            _point(init, data_name, offset, length)
            written[init.name] = (data_name, offset, length, dtype, weight)
            wrote += length
            del arr, raw
    finally:
        writer.close()
    _cast_inputs(model, low)
    return written, wrote, reused


def stream_stage(ctx: BuildContext, sub: SubmodelBuild) -> None:
    """Untie and stream every artifact of a depth-tied submodel (see the module docstring).

    Two phases: each graph is untied and its weights streamed into a new data file while every tied
    graph's data is still there (a target graph's tied weights are checked against its own data);
    then the tied data files go and the new ones take their names.
    """
    import onnx

    from sdc.compile.artifacts import data_file_of

    t0 = time.perf_counter()
    source = _Source(ctx, sub)
    portable: dict = {}  # name -> (data file, offset, length, type) in the portable graph's streamed data
    done = []  # (artifact, untied model, streamed data file name or None, bytes reused from the portable data)
    total = 0
    for art in sorted(sub.artifacts, key=lambda a: a.target != "portable"):
        path = ctx.work / art.path
        model = onnx.load(str(path), load_external_data=False)
        check = _tied_values(model, path.parent)  # before untie adds the other blocks' initializers
        try:
            untie(model, sub.ties)
        except ExportError as e:
            if art.target == "portable":
                raise ExportError(f"{sub.name}: {e}; build with --stream-weights off on a bigger machine") from None
            ctx.log(f"  {sub.name}: {art.target} graph dropped ({e}); the portable graph serves {art.target}")
            continue
        streamed = path.name + ".streamed"
        written, wrote, reused = stream_artifact(model, path.parent, streamed, source,
                                                 portable if art.target != "portable" else None, check)
        if art.target == "portable":
            portable = written
        total += wrote
        done.append((art, model, streamed if wrote else None, reused))
    folder = ctx.work / sub.name
    for art in sub.artifacts:  # the tied graphs' data
        for d in art.data_paths:
            (ctx.work / d).unlink(missing_ok=True)
    kept = {id(a) for a, *_ in done}
    for art in sub.artifacts:
        if id(art) not in kept:
            (ctx.work / art.path).unlink(missing_ok=True)
    renames = {}
    for art, _, streamed, _ in done:
        if streamed:
            final = data_file_of(ctx.work / art.path).name
            (folder / streamed).rename(folder / final)
            renames[streamed] = final
        else:
            (folder / (Path(art.path).name + ".streamed")).unlink(missing_ok=True)
    storage = sorted({_STORAGE_NAME[v[3]] for v in portable.values() if v[4]})  # the checkpoint tensors' types
    for art, model, streamed, reused in done:
        for init in model.graph.initializer:
            for e in init.external_data:
                if e.key == "location":
                    e.value = renames.get(e.value, e.value)
        onnx.save_model(model, str(ctx.work / art.path))
        art.data_paths = ([f"{sub.name}/{renames[streamed]}"] if streamed else []) + \
            ([f"{sub.name}/{renames[done[0][2]]}"] if reused and art.target != "portable" else [])
        art.weights = {
            "streamed_from": "checkpoint", "storage": storage, "blocks": {t.root: t.count for t in sub.ties},
            "validated": "graph at full width and depth with every run of blocks tied to its first block's weights "
                         "(the Paddle reference tied the same way); the untied weights are the checkpoint's "
                         "tensors, copied byte for byte" + ("" if storage == ["fp32"] else
                                                            " and cast to float32 in the graph"),
        }
    sub.artifacts = [a for a, *_ in done]
    ctx.log(f"  {sub.name}: {total / 2**30:.2f} GiB of weights streamed from the checkpoint into "
            f"{len(done)} graph(s) in {time.perf_counter() - t0:.0f}s")


def _tied_values(model, folder: Path):
    """check(name) for stream_artifact: a weight's value in the tied graph `model` (its initializers as they are
    before untying; external data read from `folder` when asked, one tensor at a time)."""
    from onnx import TensorProto, numpy_helper

    tied = {t.name: t for t in model.graph.initializer}

    def check(name: str) -> np.ndarray | None:
        t = tied.get(name)
        if t is None:
            return None
        arr = numpy_helper.to_array(t, base_dir=str(folder))
        if t.data_location == TensorProto.EXTERNAL:
            t.ClearField("raw_data")  # to_array loaded the bytes into the proto: keep one tensor in memory, not all
        return arr

    return check


_STORAGE_NAME = {1: "fp32", 10: "fp16", 16: "bf16"}
