"""The runtime CLIP tokenizer against transformers' ids stored in the fixtures (no transformers needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdc.errors import ConfigError
from sdc.runtime.tokenizer import CLIPTokenizer, save_tokenizer_files

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = FIXTURES.parents[1]
FAMILIES = {"sd1-tiny": 49407, "sd2-tiny": 0}  # family -> pad id (SD 1.x pads with <|endoftext|>, SD 2.x with "!")


def _refs(family: str) -> dict:
    return json.loads((FIXTURES / "refs" / family / "tokens.json").read_text(encoding="utf-8"))


def _check_against_refs(tok: CLIPTokenizer, family: str) -> None:
    refs = _refs(family)
    ids = tok(refs["prompts"])
    assert ids.dtype == np.int64 and ids.shape == (len(refs["prompts"]), 77)
    np.testing.assert_array_equal(ids, np.asarray(refs["input_ids"], dtype=np.int64))
    for prompt, want in zip(refs["prompts"], refs["unpadded_input_ids"]):
        assert tok.encode_unpadded(prompt) == want, prompt


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_matches_transformers(family: str) -> None:
    tok = CLIPTokenizer.from_folder(FIXTURES / family / "tokenizer")
    assert tok.pad_token_id == FAMILIES[family]
    assert tok.model_max_length == 77
    _check_against_refs(tok, family)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_truncation_keeps_eos_last(family: str) -> None:
    tok = CLIPTokenizer.from_folder(FIXTURES / family / "tokenizer")
    long_prompt = "a very long prompt " * 20
    unpadded = tok.encode_unpadded(long_prompt)
    assert len(unpadded) > 77
    ids = tok(long_prompt)
    assert ids.shape == (1, 77)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert ids[0, :-1].tolist() == unpadded[:76]


def test_unpadded_copy_made_once_under_threads() -> None:
    """The unpadded copy is made on first use: eight threads asking at once get one copy and the same ids,
    and the padded tokenizer keeps its padding and truncation."""
    from concurrent.futures import ThreadPoolExecutor

    tok = CLIPTokenizer.from_folder(FIXTURES / "sd1-tiny" / "tokenizer")
    refs = _refs("sd1-tiny")
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: (tok._plain, tok.encode_unpadded(refs["prompts"][i % len(refs["prompts"])])),
                            range(32)))
    assert len({id(copy) for copy, _ in got}) == 1
    assert [ids for _, ids in got] == [refs["unpadded_input_ids"][i % len(refs["prompts"])] for i in range(32)]
    np.testing.assert_array_equal(tok(refs["prompts"]), np.asarray(refs["input_ids"], dtype=np.int64))


def test_sd2_exclamation_is_the_pad_token() -> None:
    """SD 2.x's pad token `!` is an added special token, so `!!` is two id-0 tokens, as in diffusers."""
    sd1 = CLIPTokenizer.from_folder(FIXTURES / "sd1-tiny" / "tokenizer")
    sd2 = CLIPTokenizer.from_folder(FIXTURES / "sd2-tiny" / "tokenizer")
    assert sd2.encode_unpadded("wow!!")[2:4] == [0, 0]
    assert 0 not in sd1.encode_unpadded("wow!!")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_folder_with_tokenizer_json(tmp_path: Path, family: str) -> None:
    """A folder holding tokenizer.json (as transformers saves it) instead of vocab.json + merges.txt."""
    src = FIXTURES / family / "tokenizer"
    CLIPTokenizer.from_folder(src)._plain.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    _check_against_refs(CLIPTokenizer.from_folder(tmp_path), family)


def test_transformers_written_tokenizer_json() -> None:
    """tokenizer.json as transformers' CLIPTokenizerFast.save_pretrained wrote it (tests/fixtures/make_tokenizer_json.py),
    with no vocab.json/merges.txt beside it: the same ids as transformers' tokenizer."""
    folder = FIXTURES / "refs" / "sd2-tiny" / "tokenizer-json"
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    _check_against_refs(CLIPTokenizer.from_folder(folder), "sd2-tiny")


def test_save_tokenizer_files(tmp_path: Path) -> None:
    src = FIXTURES / "sd2-tiny" / "tokenizer"
    names = save_tokenizer_files(src, tmp_path / "bundle" / "tokenizer")
    assert set(names) == {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"}
    for name in names:
        assert (tmp_path / "bundle" / "tokenizer" / name).read_bytes() == (src / name).read_bytes()
    _check_against_refs(CLIPTokenizer.from_folder(tmp_path / "bundle" / "tokenizer"), "sd2-tiny")


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        CLIPTokenizer.from_folder(tmp_path / "missing")
    with pytest.raises(ConfigError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
    with pytest.raises(ConfigError, match="no tokenizer files"):
        save_tokenizer_files(tmp_path, tmp_path / "out")


def test_import_does_not_load_paddle() -> None:
    code = (
        "import sys, sdc.runtime.tokenizer; "
        "bad = [m for m in ('paddle', 'torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
