"""transformers' T5 encoder of a real-size folder in float32, one layer at a time, for checking a streamed bundle.

Runs in the reference venv. T5-XXL is 19 GB in float32, more than this machine holds beside anything
else; its bf16 checkpoint is 9.5 GB. The model is loaded in bf16 and each block is cast to float32 just
before it runs and back right after, so every matmul runs in float32 on the checkpoint's exact values:
the float32 forward of the real model, at the memory of the bf16 one.

    .venv-ref/bin/python scripts/t5_reference.py out/flux-t5 --ids 37,9,120,55,1 --length 77 -o out/t5-ref.npz
    .venv/bin/python scripts/t5_reference.py --compare out/t5-ref.npz out/flux-t5.bundle   # ONNX Runtime, in .venv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def reference(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import T5EncoderModel

    model = T5EncoderModel.from_pretrained(model_dir / "text_encoder_2", dtype=torch.bfloat16).eval()
    model.shared.float()
    model.encoder.final_layer_norm.float()
    def widen(module, args) -> None:  # hooks return None: a value would replace the inputs / outputs
        module.float()

    def narrow(module, args, out) -> None:
        module.to(torch.bfloat16)

    for block in model.encoder.block:
        block.register_forward_pre_hook(widen)
        block.register_forward_hook(narrow)
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids)).last_hidden_state.float().numpy()


def run_bundle(bundle: Path, ids: np.ndarray) -> np.ndarray:
    """The bundle's portable T5 graph in ONNX Runtime, graph optimisations off: each bf16 weight is cast when it is
    used instead of folded into a float32 copy up front (19 GB), so the session fits in ~10 GB."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(bundle / "text_encoder_2" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path, nargs="?")
    ap.add_argument("--ids", default="37,9,120,55,1", help="token ids of the prompt (padded with 0 to --length)")
    ap.add_argument("--length", type=int, default=77)
    ap.add_argument("-o", "--out", type=Path, default=Path("out/t5-ref.npz"))
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("REF_NPZ", "BUNDLE"))
    args = ap.parse_args()
    if args.compare:
        ref = np.load(args.compare[0])
        t0 = time.perf_counter()
        got = run_bundle(args.compare[1], ref["input_ids"])
        err = float(np.abs(got - ref["last_hidden_state"]).max())
        scale = float(np.abs(ref["last_hidden_state"]).max())
        print(f"ONNX Runtime vs transformers float32: max abs {err:.3e} (max |ref| {scale:.3f}, rel {err / scale:.2e}); "
              f"{time.perf_counter() - t0:.1f}s")
        return
    ids = [int(i) for i in args.ids.split(",")]
    input_ids = np.zeros((1, args.length), np.int64)
    input_ids[0, :len(ids)] = ids
    t0 = time.perf_counter()
    out = reference(args.model_dir, input_ids)
    np.savez(args.out, input_ids=input_ids, last_hidden_state=out)
    print(f"wrote {args.out}: last_hidden_state {out.shape}, {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
