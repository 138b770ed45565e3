"""The one image preprocessing of every source (training, evaluation's real images,
the pre-resized copy, image folders), in numpy and PIL: a leaf module."""
import io

import numpy as np
from PIL import Image


def preprocess_image(image: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [H, W] or [H, W, C] -> uint8 [S, S, 3]: RGB, centre-cropped to a square,
  resized with PIL's bilinear filter (which widens with the scale when it shrinks:
  anti-aliased)."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  image = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top:top + side, left:left + side]
  if side != image_size:
    image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
  return np.ascontiguousarray(image)


def decode_image(data: bytes) -> np.ndarray:
  """An encoded image (JPEG, PNG, ...) -> uint8 [H, W, 3] RGB (grayscale, RGBA and CMYK
  converted). Raises on a file PIL cannot decode, or a truncated one."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()  # decode everything now: a truncated file fails here
    return np.asarray(image.convert('RGB'))


def preprocess(example: dict, image_size: int) -> dict:
  """A TFDS example, its image encoded (bytes) or decoded (an array) -> {'image': uint8
  [S, S, 3], 'label': int32} (label 0 for datasets without labels). Raises on an image
  that does not decode."""
  image = example['image']
  image = decode_image(image) if isinstance(image, bytes) else image
  return {'image': preprocess_image(image, image_size),
          'label': np.int32(example.get('label', 0))}
