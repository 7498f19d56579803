"""The Paddle exports the pass tests share, built once and cached by the hash of their sources."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx_ir")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="session")
def exports(request, tmp_path_factory) -> dict[str, "onnx.ModelProto"]:
    """{"unet": TinyUNet export, "clip": sdc.graphs.clip export}, via sdc's export route, cached by source hash.

    Without pytest's cache (CI runs `-p no:cacheprovider`) they are exported into a temporary folder.
    """
    pytest.importorskip("paddle")
    pytest.importorskip("paddle2onnx")
    from tests.passes import paddle_blocks

    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("sdc-passes-exports")) if cache is not None else tmp_path_factory.mktemp("exports")
    key = paddle_blocks.sources_hash()
    folder = root / key
    if not (folder / "clip.onnx").is_file():
        tmp = root / (key + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        paddle_blocks.export_tiny_unet(tmp / "unet.onnx")
        paddle_blocks.export_tiny_clip(tmp / "clip.onnx")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return {name: onnx.load(str(folder / f"{name}.onnx")) for name in ("unet", "clip")}


