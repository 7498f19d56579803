"""CLIP tokenizer for the runtime, built with the `tokenizers` library to match transformers' CLIPTokenizer.

transformers 5's CLIPTokenizer is a `tokenizers` pipeline (the one its CLIPConverter builds): NFC +
whitespace-run collapse + lowercase, a regex split into words/digits/punctuation, byte-level mapping,
BPE with the `</w>` end-of-word suffix, and `<|startoftext|> … <|endoftext|>` added around the ids.
The special tokens (bos, eos, unk, pad, …) are added as "added tokens", which matters: SD 2.x pads
with `!`, so a literal `!` in a prompt becomes the special token (id 0), exactly as in diffusers.

Prompts are truncated to `model_max_length` (77) keeping the EOS last and padded with the config's
pad token. Imports neither paddle nor torch/transformers.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from sdc.errors import ConfigError

# Hub tokenizer folders hold some of these; a bundle keeps them byte for byte.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
# transformers' order of named special tokens: it adds them in this order, and for two entries with
# the same text (SD 1.x: eos, unk and pad are all `<|endoftext|>`) the last one's flags win.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# CLIPTokenizer's defaults for tokens a config leaves out.
CLIP_DEFAULTS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}
# CLIP's position table has 77 rows; configs without model_max_length would otherwise mean "no limit".
DEFAULT_MAX_LENGTH = 77
# transformers' CLIPTokenizer pre-tokenizer: special-token texts, contractions, letter runs, single
# digits, and runs of other non-space characters; everything else (whitespace) is dropped.
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"not valid JSON ({e})", "restore the file from the original checkpoint")
    if not isinstance(data, dict):
        raise ConfigError(path, None, "expected a JSON object")
    return data


def _added_token(value: Any, keep_special_flag: bool = False) -> AddedToken:
    """A token config value (a string, or an AddedToken dict as hub configs store) as an AddedToken.

    Named special tokens are always special; `added_tokens_decoder` entries keep their own flag.
    """
    if isinstance(value, str):
        return AddedToken(value, special=True)  # special tokens default to normalized=False
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: bool(value[k]) for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
        special = bool(value.get("special", True)) if keep_special_flag else True
        return AddedToken(value["content"], special=special, **flags)
    raise ValueError(f"not a token: {value!r}")


def _backend_from_vocab(folder: Path, unk_token: str) -> Tokenizer:
    """The Tokenizer transformers' CLIPTokenizer builds from vocab.json + merges.txt."""
    vocab, merges = BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    return Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=unk_token,
        )
    )


def _configure(backend: Tokenizer) -> None:
    """Normalizer, pre-tokenizer and decoder of transformers' CLIPTokenizer."""
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()


class CLIPTokenizer:
    """Prompts -> int64 ids [B, model_max_length], as diffusers' `tokenizer(..., padding="max_length", truncation=True)`."""

    def __init__(self, backend: Tokenizer, pad_token: str, model_max_length: int = DEFAULT_MAX_LENGTH):
        """`backend` becomes this tokenizer's own: padding and truncation are set on it here."""
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        self.pad_token = pad_token
        self.pad_token_id = int(pad_id)
        self.model_max_length = int(model_max_length)
        # Padding and truncation are state of a `tokenizers.Tokenizer`, so unpadded ids need a second copy.
        # It is made on first use: a copy re-parses the whole vocabulary (about 0.1 s for CLIP's, two
        # thirds of a load when both were made here), and generation never needs it.
        self._padded = backend
        # Truncation counts the bos/eos the post-processor adds, so eos stays last (as transformers does).
        self._padded.enable_truncation(max_length=self.model_max_length)
        self._padded.enable_padding(length=self.model_max_length, pad_id=self.pad_token_id, pad_token=pad_token)
        self._plain_copy: Tokenizer | None = None
        self._plain_lock = threading.Lock()

    @property
    def _plain(self) -> Tokenizer:
        with self._plain_lock:  # one loaded pipeline serves several threads
            if self._plain_copy is None:
                plain = Tokenizer.from_str(self._padded.to_str())
                plain.no_truncation()
                plain.no_padding()
                self._plain_copy = plain
            return self._plain_copy

    @classmethod
    def from_folder(cls, path: str | Path) -> "CLIPTokenizer":
        """Load a hub-style tokenizer folder (vocab.json + merges.txt, or tokenizer.json, plus the configs)."""
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(folder, None, "tokenizer folder not found", "the model or bundle is incomplete")
        config = _read_json(folder / "tokenizer_config.json")
        special_map = _read_json(folder / "special_tokens_map.json")

        # Which files define the special tokens follows transformers' from_pretrained: a config with
        # `added_tokens_decoder` is authoritative; otherwise special_tokens_map.json overrides the config.
        decoder = config.get("added_tokens_decoder") or {}
        values = {k: config[k] for k in SPECIAL_TOKEN_KEYS if config.get(k) is not None}
        if not decoder:
            values.update({k: special_map[k] for k in SPECIAL_TOKEN_KEYS if special_map.get(k) is not None})
        for key, default in CLIP_DEFAULTS.items():
            values.setdefault(key, default)
        try:
            specials = {k: _added_token(v) for k, v in values.items()}
            decoder_tokens = [_added_token(decoder[i], keep_special_flag=True) for i in sorted(decoder, key=int)]
        except ValueError as e:
            raise ConfigError(folder / "tokenizer_config.json", None, str(e), "restore the file from the checkpoint")
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        if not decoder:
            extra = special_map.get("additional_special_tokens") or special_map.get("extra_special_tokens") or extra
        extra_tokens = [_added_token(t) for t in extra] if isinstance(extra, list) else []

        if (folder / "tokenizer.json").is_file():
            # transformers loads tokenizer.json as it is, then puts CLIP's post-processor back on.
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            backend = _backend_from_vocab(folder, specials["unk_token"].content)
            _configure(backend)
        else:
            raise ConfigError(
                folder, None, "no tokenizer.json and no vocab.json + merges.txt", "copy the checkpoint's tokenizer folder"
            )

        # Added tokens: the config's decoder entries, then named and extra special tokens not added yet.
        existing = {t.content for t in backend.get_added_tokens_decoder().values()}
        to_add: list[AddedToken] = []
        for token in decoder_tokens:
            if token.content not in existing:
                to_add.append(token)
        existing |= {t.content for t in to_add}
        for token in [specials[k] for k in SPECIAL_TOKEN_KEYS if k in specials] + extra_tokens:
            if token.content not in existing:
                to_add.append(token)  # same text twice: added again, so the later flags win
        if to_add:
            backend.add_tokens(to_add)

        bos, eos = specials["bos_token"].content, specials["eos_token"].content
        bos_id, eos_id = backend.token_to_id(bos), backend.token_to_id(eos)
        backend.post_processor = processors.RobertaProcessing((eos, eos_id), (bos, bos_id), trim_offsets=False,
                                                             add_prefix_space=False)

        max_length = config.get("model_max_length")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 0 < max_length <= 10_000:
            max_length = DEFAULT_MAX_LENGTH
        return cls(backend, specials["pad_token"].content, max_length)

    def __call__(self, prompts: str | list[str]) -> np.ndarray:
        """Token ids, int64 [B, model_max_length]: bos, words, eos, padding; over-long prompts truncated."""
        if isinstance(prompts, str):
            prompts = [prompts]
        encodings = self._padded.encode_batch(list(prompts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        return ids.reshape(len(prompts), self.model_max_length)

    def encode_unpadded(self, prompt: str) -> list[int]:
        """bos, words, eos: no truncation, no padding."""
        return list(self._plain.encode(prompt).ids)


def save_tokenizer_files(src_folder: str | Path, dst_folder: str | Path) -> list[str]:
    """Copy a hub tokenizer folder's files into a bundle folder unchanged; returns the file names written.

    The copy is checked by loading it, so a bundle never ships a tokenizer the runtime cannot read.
    """
    src, dst = Path(src_folder), Path(dst_folder)
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not names:
        raise ConfigError(src, None, "no tokenizer files found", "the model folder's tokenizer/ is incomplete")
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, dst / name)
    CLIPTokenizer.from_folder(dst)
    return names
