"""Paddle-free runtime: loads an sdc bundle and generates images.

    import sdc.runtime
    pipe = sdc.runtime.load("out/sd15.bundle", provider="auto")
    images = pipe("a red car", num_inference_steps=20, seed=0)
"""

from __future__ import annotations

from sdc.runtime.loader import load

__all__ = ["load"]
