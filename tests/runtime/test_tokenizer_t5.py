"""The runtime's T5 tokenizer (Flux's tokenizer_2) against transformers' T5TokenizerFast on the fixture folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdc.errors import ConfigError
from sdc.runtime.tokenizer_t5 import T5Tokenizer
from tests.conftest import FIXTURES, REFS


def test_ids_match_transformers() -> None:
    """Padding to max_sequence_length, truncation keeping </s> last (the long prompt), unicode and the empty prompt."""
    refs = json.loads((REFS / "flux-tiny" / "t5_tokens.json").read_text(encoding="utf-8"))
    tok = T5Tokenizer.from_folder(FIXTURES / "flux-tiny" / "tokenizer_2")
    assert tok.model_max_length == 512
    for n, want in refs["input_ids"].items():
        got = tok(refs["prompts"], max_length=int(n))
        assert got.dtype == np.int64 and got.shape == (len(refs["prompts"]), int(n))
        assert got.tolist() == want, n
    long = tok(["a very long prompt " * 20], max_length=16)[0]
    assert long[-1] == 1 and (long != 0).all()  # truncated, </s> kept last


def test_sentencepiece_only_folder_is_refused(tmp_path) -> None:
    (tmp_path / "spiece.model").write_bytes(b"x")
    with pytest.raises(ConfigError, match="spiece.model"):
        T5Tokenizer.from_folder(tmp_path)
