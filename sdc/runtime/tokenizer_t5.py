"""T5 tokenizer for the runtime (Flux's `tokenizer_2`): the folder's tokenizer.json, run by the `tokenizers`
library the way transformers 5's T5Tokenizer runs it.

transformers does not run a T5 tokenizer.json's pipeline as saved: it takes the Unigram vocabulary (and a
Precompiled normalizer, if the file has one) and builds its own pipeline around it — whitespace split,
then Metaspace ("▁", always prepended), `</s>` appended — so runs of spaces do not become extra "▁"
tokens. This module builds the same pipeline. diffusers' FluxPipeline calls `tokenizer_2(prompt,
padding="max_length", max_length=max_sequence_length, truncation=True)`; truncation counts the `</s>`,
so a long prompt keeps it last. Folders with only `spiece.model` (sentencepiece) are refused by name:
the runtime does not depend on sentencepiece, and every hub Flux checkpoint ships tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, pre_tokenizers, processors
from tokenizers.models import Unigram

from sdc.errors import ConfigError
from sdc.runtime.tokenizer import _read_json

DEFAULT_MAX_LENGTH = 512  # FluxPipeline's max_sequence_length default (Flux dev); schnell uses 256


def _precompiled(data: dict):
    """The sentencepiece Precompiled normalizer of a tokenizer.json (alone or in a Sequence), else None."""
    norm = data.get("normalizer") or {}
    if norm.get("type") == "Sequence":
        found = [n for n in norm.get("normalizers", []) if n.get("type") == "Precompiled"]
    else:
        found = [norm] if norm.get("type") == "Precompiled" else []
    return Tokenizer.from_str(json.dumps(dict(data, normalizer=found[0]))).normalizer if found else None


def _transformers_pipeline(data: dict) -> Tokenizer:
    """The Unigram vocabulary of a tokenizer.json in transformers 5's T5 pipeline (see the module doc)."""
    model = data.get("model") or {}
    if model.get("type") != "Unigram":
        raise ValueError(f"expected a Unigram (sentencepiece) model, got {model.get('type')!r}")
    vocab = [(str(p), float(s)) for p, s in model["vocab"]]
    tok = Tokenizer(Unigram(vocab, unk_id=model.get("unk_id", 2), byte_fallback=False))
    precompiled = _precompiled(data)
    if precompiled is not None:
        tok.normalizer = precompiled
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    specials = [AddedToken(t["content"], special=True, normalized=False)
                for t in data.get("added_tokens", []) if t.get("special")]
    tok.add_special_tokens(specials)
    eos = tok.token_to_id("</s>")
    if eos is None:
        raise ValueError("the vocabulary has no </s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return tok


class T5Tokenizer:
    """Prompts -> int64 ids [B, max_length], padded with the config's pad token and truncated keeping `</s>`."""

    def __init__(self, backend: Tokenizer, pad_token: str = "<pad>", model_max_length: int = DEFAULT_MAX_LENGTH):
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        self.backend, self.pad_token, self.pad_token_id = backend, pad_token, int(pad_id)
        self.model_max_length = int(model_max_length)

    @classmethod
    def from_folder(cls, path: str | Path) -> "T5Tokenizer":
        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            hint = "it has only spiece.model: save the tokenizer with transformers' T5TokenizerFast" \
                if (folder / "spiece.model").is_file() else "the model or bundle is incomplete"
            raise ConfigError(file, None, "T5 tokenizer.json not found", hint)
        config = _read_json(folder / "tokenizer_config.json")
        try:
            backend = _transformers_pipeline(_read_json(file))
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(file, "model", str(e), "a T5 (sentencepiece Unigram) tokenizer.json is needed") from None
        except Exception as e:  # tokenizers raises plain Exceptions for malformed files
            raise ConfigError(file, None, f"not a tokenizers file ({str(e)[:120]})", "restore it from the checkpoint")
        max_length = config.get("model_max_length", DEFAULT_MAX_LENGTH)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 0 < max_length <= 100_000:
            max_length = DEFAULT_MAX_LENGTH
        pad = config.get("pad_token", "<pad>")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        try:
            return cls(backend, str(pad), max_length)
        except ValueError as e:
            raise ConfigError(folder / "tokenizer_config.json", "pad_token", str(e)) from None

    def __call__(self, texts: list[str], max_length: int | None = None) -> np.ndarray:
        """ids [len(texts), max_length] (default: the tokenizer's model_max_length)."""
        n = int(max_length or self.model_max_length)
        tok = Tokenizer.from_str(self.backend.to_str())  # padding/truncation are state: a fresh one per length
        tok.enable_truncation(max_length=n)
        tok.enable_padding(length=n, pad_id=self.pad_token_id, pad_token=self.pad_token)
        return np.asarray([e.ids for e in tok.encode_batch(list(texts))], dtype=np.int64)
