"""Runs paddle2onnx in its own process: it aborts the process on some ops and raises SystemExit on others.

Usage: python -m sdc.compile.p2o_worker PROGRAM.json OUT.onnx OPSET

The parameters are deliberately not passed (a params path that does not exist), so the graph comes
out without weights: paddle2onnx writes a 0-byte file for models over 2 GB, and attaching the
weights ourselves (sdc/compile/export.py) works for every size through one code path.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    program, out, opset = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")  # never pip-install at build time
    import paddle2onnx

    try:
        paddle2onnx.export(
            model_filename=program,
            params_filename=program + ".no-params",
            save_file=out,
            opset_version=opset,
            auto_upgrade_opset=False,
            enable_onnx_checker=False,
            verbose=False,
        )
    except SystemExit as e:
        print(f"paddle2onnx exited with {e.code}", file=sys.stderr)
        return 3
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        print("paddle2onnx wrote no graph", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
