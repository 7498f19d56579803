"""Runs paddle2onnx in its own process: it aborts the process on some ops and raises SystemExit on others.

Usage: python -m sdc.compile.p2o_worker RESULT_FD
Then one job per line on stdin, `PROGRAM.json<TAB>OUT.onnx<TAB>OPSET`; one answer per job on RESULT_FD:
`ok` or `error <why>`. Importing paddle2onnx (and Paddle under it) costs seconds, so one worker serves
every export of a build (sdc/compile/export.py keeps it); a job that kills the process costs only
that job, and the next one starts a new worker. Answers go to their own pipe because paddle2onnx's
C++ code prints to stdout and stderr at will.

The parameters are deliberately not passed (a params path that does not exist), so the graph comes
out without weights: paddle2onnx writes a 0-byte file for models over 2 GB, and attaching the
weights ourselves (sdc/compile/export.py) works for every size through one code path.
"""

from __future__ import annotations

import os
import sys


def export(program: str, out: str, opset: int) -> str:
    """'ok', or 'error <why>' for failures paddle2onnx reports without killing the process."""
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
            # The default, "polygraphy", re-parses the graph, folds constants through onnx-graphsurgeon and
            # ONNX Runtime and runs onnx's full checker: sdc's cleanup pass folds constants right after and
            # every artifact is validated in ONNX Runtime. With "None" (the CLI's spelling) every fixture
            # family's bundle came out byte for byte the same, and a tiny SD 1.x build took 17% less CPU.
            optimize_tool="None",
        )
    except SystemExit as e:
        return f"error paddle2onnx exited with {e.code}"
    except Exception as e:  # paddle2onnx raises plain Exceptions from its C++ core
        return f"error {(str(e).splitlines() or [type(e).__name__])[0][:300]}"
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        return "error paddle2onnx wrote no graph"
    return "ok"


def main() -> int:
    result = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")  # never pip-install at build time
    # paddle2onnx's optional constant folding (off, see export) imports onnxruntime.tools, which imports torch
    # whenever it is installed (the bench extra): 1.5 s. Marked absent, so no path of paddle2onnx pays it.
    sys.modules.setdefault("torch", None)
    import paddle2onnx  # noqa: F401  (once, before the first job)

    result.write("ready\n")
    for line in sys.stdin:
        program, out, opset = line.rstrip("\n").split("\t")
        result.write(export(program, out, int(opset)).replace("\n", " ") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
