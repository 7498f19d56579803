"""Image conversions around the VAE: user images -> NCHW [-1, 1] for the encoder, NHWC [0, 1] -> PIL.

Mirrors diffusers' VaeImageProcessor (resize to a multiple of the VAE downscale factor, PIL with
Lanczos, arrays with nearest neighbour like `torch.nn.functional.interpolate`'s default), but in numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.errors import InputError

IMAGE_FORMATS = (
    "a PIL image or a list of them; a float array in [0, 1] shaped HWC or NHWC (uint8 arrays in [0, 255] "
    "too); or a float array in [-1, 1] shaped NCHW"
)


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pillow is a runtime dependency, but arrays work without it
        return False
    return isinstance(x, Image.Image)


def _resize_nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """NCHW nearest-neighbour resize, index rule of torch's `interpolate(mode="nearest")`."""
    n, c, h, w = x.shape
    if (h, w) == (height, width):
        return x
    rows = np.minimum(np.floor(np.arange(height) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(width) * (w / width)).astype(np.int64), w - 1)
    return x[:, :, rows][:, :, :, cols]


def _target_size(h: int, w: int, height: int | None, width: int | None, multiple: int) -> tuple[int, int]:
    """Requested size, or the image's own rounded down to `multiple` (diffusers' get_default_height_width)."""
    height = h if height is None else height
    width = w if width is None else width
    height, width = height - height % multiple, width - width % multiple
    if height <= 0 or width <= 0:
        raise InputError(f"image of {w}x{h} pixels is smaller than the VAE downscale factor {multiple}")
    return height, width


def _pil_to_nchw(images: list, height: int | None, width: int | None, multiple: int) -> np.ndarray:
    from PIL import Image

    h, w = images[0].height, images[0].width
    height, width = _target_size(h, w, height, width, multiple)
    arrays = []
    for im in images:
        if (im.width, im.height) != (width, height):
            im = im.resize((width, height), resample=Image.LANCZOS)
        arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    x = np.stack(arrays).transpose(0, 3, 1, 2)
    return x * 2.0 - 1.0


def preprocess(image: Any, height: int | None, width: int | None, multiple: int) -> np.ndarray:
    """A user image (see IMAGE_FORMATS) as float32 NCHW in [-1, 1], resized to (height, width) if given."""
    if _is_pil(image) or (isinstance(image, (list, tuple)) and image and all(_is_pil(i) for i in image)):
        images = [image] if _is_pil(image) else list(image)
        if len({(i.width, i.height) for i in images}) != 1:
            raise InputError("all images in the list must have the same size")
        return np.ascontiguousarray(_pil_to_nchw(images, height, width, multiple), dtype=np.float32)
    if not isinstance(image, np.ndarray):
        raise InputError(f"unsupported image type {type(image).__name__}: pass {IMAGE_FORMATS}")

    x = image
    # Axis order is told apart by where the 3 colour channels sit: width 3 is not a valid size.
    if x.ndim == 3 and x.shape[-1] == 3:
        x = x[None]
    if x.ndim == 4 and x.shape[-1] == 3:
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        x = x.astype(np.float32)
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise InputError(f"HWC/NHWC image values must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
        x = x.transpose(0, 3, 1, 2) * 2.0 - 1.0
    elif x.ndim == 4 and x.shape[1] == 3:
        x = x.astype(np.float32)
        if x.size and (x.min() < -1.0 or x.max() > 1.0):
            raise InputError(f"NCHW image values must lie in [-1, 1], got [{x.min():.3g}, {x.max():.3g}]")
    else:
        raise InputError(f"image array of shape {tuple(image.shape)} is not HWC/NHWC/NCHW with 3 channels")
    if x.shape[0] == 0:
        raise InputError("image batch is empty")
    h, w = x.shape[2:]
    height, width = _target_size(h, w, height, width, multiple)
    return np.ascontiguousarray(_resize_nearest(x, height, width), dtype=np.float32)


def to_pil(images: np.ndarray) -> list:
    """NHWC float images in [0, 1] as PIL images, rounded like diffusers' numpy_to_pil."""
    from PIL import Image

    u8 = (images * 255).round().astype(np.uint8)
    return [Image.fromarray(im) for im in u8]
