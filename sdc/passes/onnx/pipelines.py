"""Which passes run, in which order, for each target: explicit tuples, read top to bottom.

Cleanup comes first: fusions match cleaned graphs, and each fusion removes what it leaves dead.
Choices that are not obvious, with the measurement or source behind each, are in the pass modules:
GroupNormalization is not used for portable/ort-cpu (ONNX Runtime expands it, slower than the
InstanceNormalization form); contrib ops that exist only on CUDA (GroupNorm, BiasSplitGelu, packed
MultiHeadAttention) appear only in ort-cuda; tensorrt keeps attention and GELU in the standard ops
TensorRT fuses itself.
"""

from __future__ import annotations

from sdc.passes.onnx._fusion import Pass
from sdc.passes.onnx.attention import attention_ort_cpu, attention_ort_cuda
from sdc.passes.onnx.cleanup import cleanup
from sdc.passes.onnx.geglu import geglu_ort_cuda
from sdc.passes.onnx.gelu import gelu_ort
from sdc.passes.onnx.group_norm import group_norm_onnx18, group_norm_ort_cuda

PORTABLE: tuple[Pass, ...] = (cleanup,)
ORT_CPU: tuple[Pass, ...] = (cleanup, attention_ort_cpu, gelu_ort)
ORT_CUDA: tuple[Pass, ...] = (cleanup, group_norm_ort_cuda, attention_ort_cuda, geglu_ort_cuda, gelu_ort)
TENSORRT: tuple[Pass, ...] = (cleanup, group_norm_onnx18)

PIPELINES: dict[str, tuple[Pass, ...]] = {
    "portable": PORTABLE,
    "ort-cpu": ORT_CPU,
    "ort-cuda": ORT_CUDA,
    "tensorrt": TENSORRT,
}
