"""Which passes run, in which order, for each target: explicit tuples, read top to bottom.

Cleanup comes first: fusions match cleaned graphs, and each fusion removes what it leaves dead.
Choices that are not obvious, with the measurement or source behind each, are in the pass modules:
GroupNormalization is not used for portable/ort-cpu (ONNX Runtime expands it, slower than the
InstanceNormalization form); contrib ops that exist only on CUDA (GroupNorm, BiasSplitGelu, packed
MultiHeadAttention) appear only in ort-cuda; tensorrt keeps attention, GELU and RMS norm in the
standard ops TensorRT fuses itself. The ONNX Runtime attention and GELU passes take variants from
more than one module (a pass is its rules): attention on heads already split (Flux, after RoPE) and
the tanh GELU (Flux, T5) are rules of `attention` and `gelu`, not passes of their own.
"""

from __future__ import annotations

from sdc.passes.onnx import attention, attention_bshd, gelu, gelu_tanh
from sdc.passes.onnx._fusion import Fusion, Pass
from sdc.passes.onnx.cleanup import cleanup
from sdc.passes.onnx.geglu import geglu_ort_cuda
from sdc.passes.onnx.group_norm import group_norm_onnx18, group_norm_ort_cuda
from sdc.passes.onnx.rms_norm import rms_norm_ort

# Rule order within a pass: the SD rules, which start at the head-split Reshape, before the BSHD one.
ort_attention_cpu = Fusion("attention", attention.MHA_RULES + attention_bshd.RULES)
ort_attention_cuda = Fusion("attention", attention.CUDA_RULES + attention_bshd.RULES)
ort_gelu = Fusion("gelu", gelu.RULES + gelu_tanh.RULES)

PORTABLE: tuple[Pass, ...] = (cleanup,)
ORT_CPU: tuple[Pass, ...] = (cleanup, ort_attention_cpu, rms_norm_ort, ort_gelu)
ORT_CUDA: tuple[Pass, ...] = (cleanup, group_norm_ort_cuda, ort_attention_cuda, rms_norm_ort, geglu_ort_cuda,
                              ort_gelu)
TENSORRT: tuple[Pass, ...] = (cleanup, group_norm_onnx18)

PIPELINES: dict[str, tuple[Pass, ...]] = {
    "portable": PORTABLE,
    "ort-cpu": ORT_CPU,
    "ort-cuda": ORT_CUDA,
    "tensorrt": TENSORRT,
}
