"""One submodel as a TensorRT engine behind the `models[name](**inputs) -> dict` interface.

TensorRT and cuda-python only (no PyTorch, no Paddle), imported when a TensorRT model is opened:
deserialize the plan, refit a weight-stripped plan from the bundle's own ONNX file (the weights travel
once, in the ONNX data, for every GPU kind), set the input shapes, bind device buffers, execute on a
stream. Where a call repeats the previous call's shapes (every denoising step after the first), the
execution is captured once as a CUDA graph and replayed: TensorRT's enqueue cost goes, and the buffers it
was captured on are reused (they only grow, and growing drops the graph).

Not run on real hardware (no GPU or TensorRT on the machines this was written on); `check_shapes`,
the one part that needs neither, is tested in CI. See README "What has run where".
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from sdc.errors import BundleError, InputError


def check_shapes(path: Path, spec: dict, dims: dict[str, list[int]], inputs: dict[str, np.ndarray]) -> None:
    """Refuse inputs the engine's profile does not serve, naming the dim and its range (TensorRT itself
    would fail with an opaque message, or a named dim could take two values)."""
    expected = {t["name"]: t["shape"] for t in spec["inputs"]}
    if set(inputs) != set(expected):
        raise InputError(f"{path}: expected inputs {sorted(expected)}, got {sorted(inputs)}")
    seen: dict[str, int] = {}
    for name, shape in expected.items():
        got = np.shape(inputs[name])
        if len(got) != len(shape):
            raise InputError(f"{path}: input {name} has {len(got)} dims, the engine takes {len(shape)}")
        for d, v in zip(shape, got):
            if isinstance(d, int):
                if v != d:
                    raise InputError(f"{path}: input {name} has size {v} where the engine takes {d}")
                continue
            lo, _, hi = dims.get(d, (v, v, v))
            if not lo <= v <= hi:
                raise InputError(f"{path}: {d} = {v} is outside the engine's profile ({lo}..{hi}); build engines "
                                 f"for a profile that covers it (sdc engines build --profile)")
            if seen.setdefault(d, v) != v:
                raise InputError(f"{path}: dim {d} is {seen[d]} in one input and {v} in {name}")


def _ok(result):
    """cuda-python returns (error, *values): raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class TensorrtModel:
    """A deserialized, refit engine with its execution context, stream and device buffers."""

    def __init__(self, plan: Path, onnx: Path, spec: dict, entry: dict, cuda_graphs: bool = True):
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        from sdc.engines.tensorrt import EngineBuildError, refit_from_onnx

        self.trt, self.cudart = trt, cudart
        self.path, self.spec, self.dims = Path(plan), spec, entry["dims"]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise BundleError(f"{plan}: TensorRT cannot deserialize this plan (another TensorRT version or GPU); "
                              "rebuild it with sdc engines build")
        if entry["settings"].get("weight_stripped", True):
            try:
                refit_from_onnx(trt, self.engine, Path(onnx), self.logger)
            except EngineBuildError as e:
                raise BundleError(str(e)) from None
        self.context = self.engine.create_execution_context()
        self.stream = _ok(cudart.cudaStreamCreate())
        self.dtypes = {t["name"]: np.dtype(t["dtype"]) for t in spec["inputs"] + spec["outputs"]}
        self.output_names = [t["name"] for t in spec["outputs"]]
        trt_types = {"float32": trt.float32, "float16": trt.float16, "int32": trt.int32, "int64": trt.int64,
                     "bool": trt.bool, "int8": trt.int8, "uint8": trt.uint8}
        for name, dtype in self.dtypes.items():  # the buffers are sized and read by the spec's dtypes
            if self.engine.get_tensor_dtype(name) != trt_types.get(dtype.name):
                raise BundleError(f"{plan}: tensor {name} is {self.engine.get_tensor_dtype(name)} in the engine, "
                                  f"{dtype.name} in the bundle's contract; rebuild the engines")
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self.cuda_graphs = cuda_graphs
        self.graph_exec = None
        self.last_shapes: dict | None = None
        self.lock = threading.Lock()

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                _ok(self.cudart.cudaFree(ptr))
            ptr = int(_ok(self.cudart.cudaMalloc(max(nbytes, 1))))
            self.buffers[name] = (ptr, nbytes)
            self._drop_graph()  # captured on the old addresses
        return ptr

    def _drop_graph(self) -> None:
        if self.graph_exec is not None:
            _ok(self.cudart.cudaGraphExecDestroy(self.graph_exec))
            self.graph_exec = None

    def _execute(self, same_shapes: bool) -> None:
        cudart = self.cudart
        if not self.cuda_graphs or not same_shapes:
            self._drop_graph()
            if not self.context.execute_async_v3(int(self.stream)):
                raise RuntimeError(f"{self.path}: TensorRT execution failed")
            return
        if self.graph_exec is None:  # the previous call ran these shapes once: capture now
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _ok(cudart.cudaStreamBeginCapture(self.stream, mode))
            ok = self.context.execute_async_v3(int(self.stream))
            graph = _ok(cudart.cudaStreamEndCapture(self.stream))
            if not ok:
                raise RuntimeError(f"{self.path}: TensorRT execution failed while capturing a CUDA graph")
            self.graph_exec = _ok(cudart.cudaGraphInstantiate(graph, 0))
            _ok(cudart.cudaGraphDestroy(graph))
        _ok(cudart.cudaGraphLaunch(self.graph_exec, self.stream))

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_shapes(self.path, self.spec, self.dims, inputs)
        with self.lock:  # one execution context, one set of buffers: calls from several threads take turns
            return self._run(inputs)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, h2d = self.cudart, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        feed = {k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in inputs.items()}
        shapes = {k: v.shape for k, v in feed.items()}
        same = shapes == self.last_shapes
        for name, arr in feed.items():
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            self.context.set_tensor_address(name, ptr)
            _ok(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, outputs[name].nbytes))
        self._execute(same)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, out in outputs.items():
            _ok(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name][0], out.nbytes, d2h, self.stream))
        _ok(cudart.cudaStreamSynchronize(self.stream))
        self.last_shapes = shapes
        return outputs

    def __del__(self):
        try:
            self._drop_graph()
            for ptr, _ in self.buffers.values():
                self.cudart.cudaFree(ptr)
            self.cudart.cudaStreamDestroy(self.stream)
        except Exception:  # interpreter shutdown: the driver frees what is left with the context
            pass
