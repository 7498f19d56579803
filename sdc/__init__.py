"""sdc: ahead-of-time compiler for diffusion models on PaddlePaddle.

`sdc.graphs` builds Paddle modules from diffusers checkpoints, `sdc.compile` turns them into a
validated bundle, `sdc.runtime` loads a bundle and generates images without Paddle.
"""

__version__ = "0.1.0"
