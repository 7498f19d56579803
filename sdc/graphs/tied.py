"""Depth-tied modules: a full-depth submodel whose repeated blocks are one Paddle layer, for graphs too big to hold.

A real Flux transformer is 19 double-stream and 38 single-stream blocks of identical structure (47.6 GB
of fp32 weights); T5-XXL is 24 identical layers after the first (19 GB). The graph of such a model does
not depend on the blocks' weights, so sdc traces and exports it from a module whose repeated blocks
are the same layer object: the first block of each run, with the checkpoint's weights, called N times.
That module costs one block per run in memory, runs (its outputs are a full-depth forward with every
block's weights tied to the first's, which validates the exported graph at full width and depth), and
exports a graph in which each tied parameter is read once per repetition. sdc.compile.streamed then
gives every repetition its own weights, streamed from the checkpoint into the bundle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tie:
    """Entries start .. count-1 of the LayerList at `root` (a dotted path) are all entry `start`."""

    root: str
    start: int
    count: int

    @property
    def repeats(self) -> int:
        return self.count - self.start

    def prefix(self, index: int | None = None) -> str:
        return f"{self.root}.{self.start if index is None else index}."

    def owns(self, key: str) -> bool:
        """Whether a state-dict key is a parameter of the tied entry."""
        return key.startswith(self.prefix())

    def untied(self, key: str, index: int) -> str:
        """The key of the same parameter in entry `index`."""
        return self.prefix(index) + key[len(self.prefix()):]


def ties_for(name: str, cfg) -> tuple[Tie, ...]:
    """The runs of identical blocks of a submodel (empty when it has none worth tying)."""
    from sdc.graphs.configs_flux import FluxConfig, T5Config

    if isinstance(cfg, FluxConfig):
        ties = (Tie("transformer_blocks", 0, cfg.num_layers), Tie("single_transformer_blocks", 0, cfg.num_single_layers))
    elif isinstance(cfg, T5Config):  # block 0 owns the relative position bias; blocks 1.. are alike
        ties = (Tie("encoder.block", 1, cfg.num_layers),)
    else:
        ties = ()
    return tuple(t for t in ties if t.repeats > 1)


def _reduced(cfg, ties: tuple[Tie, ...]):
    """The config with each tied run cut to its first entry."""
    from sdc.graphs.configs_flux import FluxConfig

    if isinstance(cfg, FluxConfig):
        depth = {t.root: t.start + 1 for t in ties}
        return dataclasses.replace(cfg, num_layers=depth.get("transformer_blocks", cfg.num_layers),
                                   num_single_layers=depth.get("single_transformer_blocks", cfg.num_single_layers))
    return dataclasses.replace(cfg, num_layers=ties[0].start + 1)


def _entry_of(key: str, tie: Tie) -> int | None:
    if not key.startswith(tie.root + "."):
        return None
    head = key[len(tie.root) + 1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def load_tied(model_dir: Path, name: str, cfg) -> tuple[object, tuple[Tie, ...]]:
    """Submodel `name` at full depth with its repeated blocks tied, reading only the weights it holds."""
    import paddle
    from paddle import nn

    from sdc.graphs import _ignore_for, build, folder_of
    from sdc.graphs.weights import assign_weights, canonical_key, find_weight_files, read_weights

    ties = ties_for(name, cfg)
    if not ties:
        raise ValueError(f"{name}: no repeated blocks to tie")
    folder = Path(model_dir) / folder_of(name)

    def held(key: str) -> bool:  # every key outside the tied runs, and the runs' first entries
        k = canonical_key(key)
        return all((_entry_of(k, t) is None or _entry_of(k, t) <= t.start) for t in ties)

    tensors = read_weights(find_weight_files(folder), want=held)
    layer = build(name, _reduced(cfg, ties))
    with paddle.no_grad():
        assign_weights(layer, tensors, str(folder), ignore=_ignore_for(name))
    del tensors
    for t in ties:
        parent_path, attr = t.root.rsplit(".", 1) if "." in t.root else ("", t.root)
        parent = layer
        for part in filter(None, parent_path.split(".")):
            parent = getattr(parent, part)
        blocks = list(getattr(parent, attr))
        setattr(parent, attr, nn.LayerList(blocks + [blocks[t.start]] * (t.count - t.start - 1)))
    layer.cfg = cfg
    return layer, ties
