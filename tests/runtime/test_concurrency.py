"""One loaded pipeline serves several threads at once: every image equals the serial call with its seed.

ONNX Runtime sessions are safe to run from several threads; what could break is per-call state on the
pipeline (schedulers, timings, noise). Memory over a long run is measured by scripts/long_run_rss.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sdc.runtime.loader import load

THREADS = 4
CALLS = 8  # two rounds of four concurrent calls


def _generate(pipe, seed: int) -> tuple[np.ndarray, dict]:
    prompt = ["a red circle", "a cat", "two green squares", "a blue sky"][seed % 4]
    image = pipe(prompt, num_inference_steps=3, seed=seed, output_type="np",
                 scheduler=["DDIMScheduler", "EulerAncestralDiscreteScheduler"][seed % 2])
    return image, dict(pipe.last_timings)


def test_threads_give_the_serial_images(bundles):
    pipe = load(bundles["sd1-tiny"], provider="cpu")
    serial = [_generate(pipe, seed)[0] for seed in range(CALLS)]
    with ThreadPoolExecutor(THREADS) as pool:
        parallel = list(pool.map(lambda s: _generate(pipe, s), range(CALLS)))
    for seed, (want, (got, timings)) in enumerate(zip(serial, parallel)):
        np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}: a concurrent call changed the image")
        # Each thread reads the timings of its own latest call, whole.
        assert {"text_encoder", "unet", "vae_decoder", "denoise_loop", "total"} <= set(timings), timings
    assert len({im.tobytes() for im in serial}) == CALLS  # the seeds and prompts do differ
