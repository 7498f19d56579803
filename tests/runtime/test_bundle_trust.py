"""The bundle reader treats a bundle as untrusted data: escaping paths, symlinks, external-data locations,
wrong types and damaged files are refused with the project's own one-line error when the bundle is opened.

The hypothesis tests throw mutated manifests and truncated or garbage files at the reader: each must load
or be refused with an SdcError, never crash with anything else, and never name a file outside the bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from sdc.errors import BundleError, SdcError
from sdc.runtime.bundle import read_manifest, sha256_file, verify_files
from sdc.runtime.loader import load
from tests.conftest import run_sdc


def one_line_refusal(r, *needles: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]


@pytest.fixture
def bundle(bundles, tmp_path) -> Path:
    """A private copy of the sd1-tiny bundle inside tmp_path/b (tmp_path itself is 'outside')."""
    dst = tmp_path / "b"
    shutil.copytree(bundles["sd1-tiny"], dst)
    return dst


def edit(bundle: Path, change) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def relist(bundle: Path, rel: str) -> None:
    """Update the file table after changing a listed file (so the checksum is not what refuses it)."""
    def change(m):
        m["files"][rel] = {"sha256": sha256_file(bundle / rel), "bytes": (bundle / rel).stat().st_size}
    edit(bundle, change)


def art(m: dict, sub: str = "unet", i: int = 0) -> dict:
    return m["submodels"][sub]["artifacts"][i]


ESCAPES = ["../outside.onnx", "/etc/passwd", "unet/../../outside.onnx", "C:/outside.onnx", "unet\\model.onnx",
           "./unet/model.onnx", "unet//model.onnx", "", "unet/model.onnx\x00.txt"]


@pytest.mark.parametrize("where", ["artifact", "data_path", "files", "engine"])
@pytest.mark.parametrize("path", ESCAPES)
def test_escaping_paths_refused_on_open(bundle, where, path):
    (bundle.parent / "outside.onnx").write_bytes((bundle / "unet" / "model.onnx").read_bytes())

    def change(m):
        if where == "artifact":
            art(m)["path"] = path
        elif where == "data_path":
            art(m)["data_paths"] = [path]
        elif where == "files":
            m["files"][path] = {"sha256": "0" * 64, "bytes": 1}
        else:
            m["submodels"]["unet"]["engines"] = [{"path": path}]
    edit(bundle, change)
    with pytest.raises(BundleError) as e:
        read_manifest(bundle)
    assert "malformed" in str(e.value) and "\n" not in str(e.value)


def test_escaping_artifact_fails_verify_and_generate(bundle, tmp_path):
    """The issue's case: a manifest pointing an artifact outside; verify used to pass it."""
    (tmp_path / "outside.onnx").write_bytes((bundle / "vae_encoder" / "model.onnx").read_bytes())
    edit(bundle, lambda m: art(m, "vae_encoder").update(path="../outside.onnx"))
    one_line_refusal(run_sdc("verify", bundle), "../outside.onnx")
    one_line_refusal(run_sdc("generate", bundle, "a cat", "-o", tmp_path / "x.png", "--steps", "1"), "../outside.onnx")
    assert not (tmp_path / "x.png").exists()


def test_unlisted_artifact_path_refused(bundle):
    """An artifact the file table does not list would load unchecked."""
    shutil.copy(bundle / "unet" / "model.onnx", bundle / "unet" / "other.onnx")
    edit(bundle, lambda m: art(m).update(path="unet/other.onnx"))
    with pytest.raises(BundleError, match="not in the file table"):
        read_manifest(bundle)


def test_symlinked_file_leaving_the_bundle(bundle, tmp_path):
    vocab = bundle / "tokenizer" / "vocab.json"
    outside = tmp_path / "vocab.json"
    shutil.copy(vocab, outside)
    vocab.unlink()
    vocab.symlink_to(outside)  # same bytes: only the link gives it away
    with pytest.raises(BundleError, match="outside the bundle"):
        load(bundle, verify="full")
    one_line_refusal(run_sdc("verify", bundle), "outside the bundle")


def test_symlinked_folder_leaving_the_bundle(bundle, tmp_path):
    shutil.move(bundle / "scheduler", tmp_path / "scheduler")
    (bundle / "scheduler").symlink_to(tmp_path / "scheduler", target_is_directory=True)
    with pytest.raises(BundleError, match="outside the bundle"):
        read_manifest(bundle)


def test_symlink_inside_the_bundle_is_allowed(bundle):
    """A link that stays inside is not an escape (an unlisted one is still reported by verify)."""
    (bundle / "link.txt").symlink_to(bundle / "SUMMARY.txt")
    read_manifest(bundle)
    assert verify_files(bundle, read_manifest(bundle)) == ["link.txt"]
    r = run_sdc("verify", bundle)
    assert r.returncode == 1 and "files not in the manifest: link.txt" in r.stderr, r.stderr


def _point_external_data(bundle: Path, location: str) -> str:
    """Rewrite the text encoder graph's external-data location (onnx, build extra) and relist it."""
    import onnx

    rel = "text_encoder/model.onnx"
    model = onnx.load(str(bundle / rel), load_external_data=False)
    changed = 0
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
                changed += 1
    assert changed, "the fixture's text encoder keeps its weights inline: this test needs external data"
    onnx.save_model(model, str(bundle / rel))
    relist(bundle, rel)
    return rel


@pytest.mark.parametrize("location", ["../../outside.data", "/outside.data", "../unet/model.onnx.data",
                                      "sub/model.onnx.data", "model.onnx"])
def test_external_data_location_outside_the_artifact(bundle, tmp_path, location):
    shutil.copy(bundle / "text_encoder" / "model.onnx.data", tmp_path / "outside.data")
    _point_external_data(bundle, location)
    with pytest.raises(BundleError, match="external data location"):
        load(bundle, verify="full")
    one_line_refusal(run_sdc("verify", bundle), "external data location")


def test_unlisted_file_fails_verify(bundle):
    (bundle / "unet" / "extra.bin").write_bytes(b"x")
    r = run_sdc("verify", bundle)
    assert r.returncode == 1 and "files not in the manifest: unet/extra.bin" in r.stderr, r.stderr
    assert "failed verification" in r.stderr, r.stderr


TYPE_ERRORS = [
    (lambda m: m.update(submodels=[]), "submodels"),
    (lambda m: m.update(submodels={}), "submodels"),
    (lambda m: m.pop("files"), "files"),
    (lambda m: m.update(files={"unet/model.onnx": "abc"}), "files"),
    (lambda m: m["files"]["unet/model.onnx"].update(bytes="12"), "bytes"),
    (lambda m: m["files"]["unet/model.onnx"].update(sha256=7), "sha256"),
    (lambda m: m["files"]["unet/model.onnx"].update(sha256="xyz"), "sha256"),
    (lambda m: m["pipeline"].update(vae_scaling_factor="0.18"), "pipeline.vae_scaling_factor"),
    (lambda m: m["pipeline"].update(latent_channels=0), "pipeline.latent_channels"),
    (lambda m: m["pipeline"].pop("vae_downscale"), "pipeline.vae_downscale"),
    (lambda m: m["defaults"].update(height=True), "defaults.height"),
    (lambda m: m["defaults"].update(precision="fp8"), "defaults.precision"),
    (lambda m: m.update(defaults=None), "defaults"),
    (lambda m: m["submodels"]["unet"].update(artifacts={}), "submodels.unet.artifacts"),
    (lambda m: m["submodels"]["unet"].update(artifacts=[]), "submodels.unet.artifacts"),
    (lambda m: art(m).update(precision=16), "precision"),
    (lambda m: art(m).update(target="openvino"), "unknown target"),
    (lambda m: art(m).pop("path"), "artifacts[0].path"),
    (lambda m: art(m).update(data_paths="unet/model.onnx.data"), "data_paths"),
    (lambda m: art(m).update(validation=[1]), "validation"),
    (lambda m: art(m).update(validation={"atol": "1e-4"}), "validation.atol"),
    (lambda m: m["submodels"]["unet"]["inputs"][0].update(dtype="float99"), "dtype"),
    (lambda m: m["submodels"]["unet"]["inputs"][0].update(shape="batch"), "shape"),
    (lambda m: m["submodels"]["unet"]["inputs"][0].pop("name"), "inputs[0].name"),
    (lambda m: m["submodels"]["unet"].update(engines={"path": "x"}), "engines"),
    (lambda m: m["source"].update(family=["sd"]), "source.family"),
    (lambda m: m["submodels"].update({"../x": m["submodels"]["unet"]}), "submodels"),
]


@pytest.mark.parametrize("change, needle", TYPE_ERRORS)
def test_malformed_fields_give_one_line_errors(bundle, change, needle):
    edit(bundle, change)
    with pytest.raises(BundleError) as e:
        read_manifest(bundle)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_malformed_field_on_the_cli(bundle):
    edit(bundle, lambda m: m["defaults"].update(steps="many"))
    for cmd in ("inspect", "verify"):
        one_line_refusal(run_sdc(cmd, bundle), "defaults.steps")


@pytest.mark.parametrize("rel, content", [
    ("scheduler/scheduler_config.json", b"[1, 2]"),
    ("scheduler/scheduler_config.json", b"{\"num_train_timesteps\": \"many\"}"),
    ("tokenizer/vocab.json", b"\xff\xfe garbage"),
    ("tokenizer/tokenizer_config.json", b"[]"),
    ("unet/model.onnx", b"\x08\x07garbage"),
    ("unet/model.onnx", b""),
])
def test_damaged_files_with_matching_checksums(bundle, rel, content):
    """A damaged file that the checksum table agrees with (the author listed it so): still a clean refusal."""
    (bundle / rel).write_bytes(content)
    relist(bundle, rel)
    with pytest.raises(SdcError):
        load(bundle, verify="full")


# ---------------------------------------------------------------- property-based

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                        st.text(max_size=12), st.sampled_from(["../x", "/abs", "unet/model.onnx", "fp16", "ort-cpu",
                                                                "..", "C:\\x", "unet/../../../etc/passwd"]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=6)


def _paths(obj, prefix=()):
    """Every (container path) of a JSON tree, leaves included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(m: dict, path: tuple, how: str, value) -> None:
    *parents, last = path
    node = m
    for p in parents:
        node = node[p]
    if how == "delete" and isinstance(node, dict):
        node.pop(last)
    elif how == "delete" and isinstance(node, list):
        node.pop(last)
    else:
        node[last] = value


_PRISTINE: dict[str, Path] = {}


def _fresh(bundles, tmp_path_factory) -> Path:
    """A scratch copy of the bundle, reset from a pristine copy for each example (hypothesis reruns one test
    function many times, so the per-test tmp_path is shared between its examples)."""
    if "root" not in _PRISTINE:
        _PRISTINE["root"] = tmp_path_factory.mktemp("fuzz")
    root = _PRISTINE["root"]
    dst = root / "inside" / "b"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(bundles["sd1-tiny"], dst, symlinks=True)
    return dst


_WATCH: dict = {"hooked": False, "example": None}  # example: (fuzz root, bundle, opens seen) while one runs


def _audit(event, args) -> None:
    example = _WATCH["example"]
    if event != "open" or example is None or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    root, inside, seen = example
    p = os.path.realpath(os.fsdecode(args[0]))
    if p.startswith(root) and not p.startswith(inside):
        seen.append(p)


@contextlib.contextmanager
def _opens_only_inside(bundle: Path):
    """Records, while the block runs, the files opened under the fuzz root but outside the bundle.

    Audit hooks cannot be removed, and each one runs on every audited event of the process for the rest of its
    life (every open, import, compile, frame access): one hook, installed once, watches only inside the block.
    A hook per example (25) made the pytest-xdist worker that ran this test a third slower afterwards."""
    import sys

    if not _WATCH["hooked"]:
        sys.addaudithook(_audit)
        _WATCH["hooked"] = True
    seen: list[str] = []
    _WATCH["example"] = (str(bundle.parent.parent), str(bundle), seen)
    try:
        yield seen
    finally:
        _WATCH["example"] = None


# SDC_FUZZ_EXAMPLES=500 fuzzes longer (CONTRIBUTING.md); the default keeps the suite fast.
EXAMPLES = int(os.environ.get("SDC_FUZZ_EXAMPLES", "0")) or None


@settings(max_examples=EXAMPLES or 25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifests_never_crash_or_escape(bundles, tmp_path_factory, data):
    bundle = _fresh(bundles, tmp_path_factory)
    (bundle.parent.parent / "outside.onnx").write_bytes(b"\x08\x07")
    m = json.loads((bundle / "manifest.json").read_text())
    paths = [p for p in _paths(m) if p and p[0] != "format" and p[0] != "format_version"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        how = data.draw(st.sampled_from(["replace", "delete"]))
        try:
            _mutate(m, path, how, data.draw(JSON_VALUES))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or retyped a parent: skip this one
        paths = [p for p in _paths(m) if p and p[0] not in ("format", "format_version")]
        if not paths:
            break
    (bundle / "manifest.json").write_text(json.dumps(m))
    with _opens_only_inside(bundle) as seen:
        try:
            from sdc.cli.bundle import inspect

            inspect(bundle, as_json=False)  # every field `sdc inspect` shows, rendered
            pipe = load(bundle, verify="sizes")
        except SdcError as e:
            assert "\n" not in str(e)
            return
        finally:
            assert not seen, f"read outside the bundle: {seen}"
    for a in pipe.artifacts.values():
        assert (bundle / a["path"]).resolve().is_relative_to(bundle.resolve())


@settings(max_examples=EXAMPLES or 20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_and_garbage_files_never_crash(bundles, tmp_path_factory, data):
    bundle = _fresh(bundles, tmp_path_factory)
    files = sorted(json.loads((bundle / "manifest.json").read_text())["files"]) + ["manifest.json"]
    rel = data.draw(st.sampled_from(files))
    raw = (bundle / rel).read_bytes()
    how = data.draw(st.sampled_from(["truncate", "garbage", "flip"]))
    if how == "truncate":
        raw = raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "garbage":
        raw = data.draw(st.binary(max_size=256))
    else:
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:] if raw else raw
    (bundle / rel).write_bytes(raw)
    if rel != "manifest.json" and data.draw(st.booleans()):
        relist(bundle, rel)  # the damage agrees with the checksum table: the reader must still hold
    try:
        pipe = load(bundle, verify="full")
        pipe("a cat", num_inference_steps=1, height=32, width=32, seed=0, output_type="np")
    except SdcError as e:
        assert "\n" not in str(e)


def test_manifest_symlinked_outside_and_deep_nesting(bundle, tmp_path):
    outside = tmp_path / "manifest.json"
    shutil.copy(bundle / "manifest.json", outside)
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        read_manifest(bundle)
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError):
        read_manifest(bundle)


def test_unlisted_tokenizer_file_is_not_read(bundle):
    """The runtime reads the tokenizer and scheduler folders whole: a file there outside the checksum table is refused."""
    edit(bundle, lambda m: m["files"].pop("tokenizer/vocab.json"))
    with pytest.raises(BundleError, match="tokenizer/vocab.json"):
        load(bundle, verify="full")


def test_top_level_engine_path_escape(bundle):
    edit(bundle, lambda m: m.update(engines=[{"path": "../x.plan"}]))
    with pytest.raises(BundleError, match="engines"):
        read_manifest(bundle)
