"""Inception-v3 as in the 2015-12-05 TensorFlow graph used for FID and IS (the
network pytorch-fid ports as FIDInceptionA/C/E_1/E_2), in float32 at the
highest matmul precision.

It differs from torchvision's and Keras's Inception-v3 in:
- the average pools inside Mixed_5b-d, Mixed_6b-e and Mixed_7b divide by the
  number of real (not padded) inputs; Keras does so too, torchvision does not;
- Mixed_7c's pool branch is a 3x3 max pool, not an average pool;
- 1008 logits (classes 1-1000 of ImageNet, plus 8 unused).
Outputs: 2048-d pool features (FID, KID) and the 1008 logits (IS).

Module names are pytorch-fid's (Mixed_5b/branch1x1, ...), so its weight file
maps onto this by name (`python -m sagan_jax.convert_inception`).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from sagan_jax import weights

HIGHEST = jax.lax.Precision.HIGHEST
SIZE = 299


class BasicConv(nn.Module):
  """Conv (no bias), batch norm with fixed statistics (eps 1e-3), ReLU."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: str | tuple = 'VALID'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (*self.kernel, x.shape[-1], self.features))
    x = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), self.padding,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=HIGHEST)
    p = lambda name, init: self.param(name, init, (self.features,))
    scale, bias = p('scale', nn.initializers.ones), p('bias', nn.initializers.zeros)
    mean, var = p('mean', nn.initializers.zeros), p('var', nn.initializers.ones)
    return nn.relu((x - mean) * (scale * jax.lax.rsqrt(var + 1e-3)) + bias)


def _same(kernel):  # torch's symmetric padding of odd kernels, stride 1
  return tuple((k // 2, k // 2) for k in kernel)


def conv(features, kernel, name, stride=1, padding='VALID'):
  if padding == 'SAME':
    padding = _same(kernel)
  return BasicConv(features, kernel, stride, padding, name=name)


def avg_pool_3x3(x):
  """3x3, stride 1, padding 1, averaging the real inputs only (FID's pools)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), 'VALID')


class InceptionA(nn.Module):  # Mixed_5b-d, 35x35
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = conv(64, (1, 1), 'branch1x1')(x)
    b5 = conv(48, (1, 1), 'branch5x5_1')(x)
    b5 = conv(64, (5, 5), 'branch5x5_2', padding='SAME')(b5)
    b3 = conv(64, (1, 1), 'branch3x3dbl_1')(x)
    b3 = conv(96, (3, 3), 'branch3x3dbl_2', padding='SAME')(b3)
    b3 = conv(96, (3, 3), 'branch3x3dbl_3', padding='SAME')(b3)
    bp = conv(self.pool_features, (1, 1), 'branch_pool')(avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):  # Mixed_6a, 35x35 -> 17x17
  @nn.compact
  def __call__(self, x):
    b3 = conv(384, (3, 3), 'branch3x3', stride=2)(x)
    bd = conv(64, (1, 1), 'branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), 'branch3x3dbl_2', padding='SAME')(bd)
    bd = conv(96, (3, 3), 'branch3x3dbl_3', stride=2)(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3_s2(x)], -1)


class InceptionC(nn.Module):  # Mixed_6b-e, 17x17
  c7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.c7
    b1 = conv(192, (1, 1), 'branch1x1')(x)
    b7 = conv(c7, (1, 1), 'branch7x7_1')(x)
    b7 = conv(c7, (1, 7), 'branch7x7_2', padding='SAME')(b7)
    b7 = conv(192, (7, 1), 'branch7x7_3', padding='SAME')(b7)
    bd = conv(c7, (1, 1), 'branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), 'branch7x7dbl_2', padding='SAME')(bd)
    bd = conv(c7, (1, 7), 'branch7x7dbl_3', padding='SAME')(bd)
    bd = conv(c7, (7, 1), 'branch7x7dbl_4', padding='SAME')(bd)
    bd = conv(192, (1, 7), 'branch7x7dbl_5', padding='SAME')(bd)
    bp = conv(192, (1, 1), 'branch_pool')(avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):  # Mixed_7a, 17x17 -> 8x8
  @nn.compact
  def __call__(self, x):
    b3 = conv(192, (1, 1), 'branch3x3_1')(x)
    b3 = conv(320, (3, 3), 'branch3x3_2', stride=2)(b3)
    b7 = conv(192, (1, 1), 'branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), 'branch7x7x3_2', padding='SAME')(b7)
    b7 = conv(192, (7, 1), 'branch7x7x3_3', padding='SAME')(b7)
    b7 = conv(192, (3, 3), 'branch7x7x3_4', stride=2)(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3_s2(x)], -1)


class InceptionE(nn.Module):  # Mixed_7b (average pool), Mixed_7c (max pool), 8x8
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = conv(320, (1, 1), 'branch1x1')(x)
    b3 = conv(384, (1, 1), 'branch3x3_1')(x)
    b3 = jnp.concatenate([conv(384, (1, 3), 'branch3x3_2a', padding='SAME')(b3),
                          conv(384, (3, 1), 'branch3x3_2b', padding='SAME')(b3)], -1)
    bd = conv(448, (1, 1), 'branch3x3dbl_1')(x)
    bd = conv(384, (3, 3), 'branch3x3dbl_2', padding='SAME')(bd)
    bd = jnp.concatenate([conv(384, (1, 3), 'branch3x3dbl_3a', padding='SAME')(bd),
                          conv(384, (3, 1), 'branch3x3dbl_3b', padding='SAME')(bd)], -1)
    pooled = (nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))) if self.max_pool
              else avg_pool_3x3(x))
    bp = conv(192, (1, 1), 'branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class InceptionV3(nn.Module):
  """x [N, 299, 299, 3] in [-1, 1] -> (pool features [N, 2048], logits [N, 1008])."""

  @nn.compact
  def __call__(self, x):
    x = conv(32, (3, 3), 'Conv2d_1a_3x3', stride=2)(x)
    x = conv(32, (3, 3), 'Conv2d_2a_3x3')(x)
    x = conv(64, (3, 3), 'Conv2d_2b_3x3', padding='SAME')(x)
    x = max_pool_3x3_s2(x)
    x = conv(80, (1, 1), 'Conv2d_3b_1x1')(x)
    x = conv(192, (3, 3), 'Conv2d_4a_3x3')(x)
    x = max_pool_3x3_s2(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(1008, precision=HIGHEST, name='fc')(features)
    return features, logits


def preprocess(images):
  """uint8 images [N, H, W, 3] -> [N, 299, 299, 3] in [-1, 1]: bilinear with
  half-pixel centres and no anti-aliasing (pytorch-fid's F.interpolate(...,
  mode='bilinear', align_corners=False)), then 2 x - 1 on [0, 1]."""
  x = images.astype(jnp.float32) / 255.0
  x = jax.image.resize(x, (x.shape[0], SIZE, SIZE, 3), 'bilinear', antialias=False)
  return 2.0 * x - 1.0


# Weights: pytorch-fid's file -> .npz (convert_inception.py) -> params.

def from_pytorch_fid(state: dict) -> dict[str, np.ndarray]:
  """pytorch-fid's state dict (name -> array) -> {'Mixed_5b/branch1x1/kernel': ...}."""
  out = {}
  for name, value in state.items():
    value = np.asarray(value, np.float32)
    *path, layer, kind = name.split('.')
    if kind == 'num_batches_tracked':
      continue
    if name.startswith('fc.'):
      out[f'fc/{kind if kind == "bias" else "kernel"}'] = value.T if kind == 'weight' else value
    elif layer == 'conv' and kind == 'weight':  # [out, in, kh, kw] -> [kh, kw, in, out]
      out['/'.join(path + ['kernel'])] = value.transpose(2, 3, 1, 0)
    elif layer == 'bn':
      field = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean',
               'running_var': 'var'}[kind]
      out['/'.join(path + [field])] = value
    else:
      raise ValueError(f'unexpected entry {name!r} in the Inception weight file')
  return out


@functools.cache
def param_shapes() -> dict:
  """InceptionV3's params as ShapeDtypeStructs (nothing computed or compiled; traced
  once per process: ~0.5 s)."""
  return jax.eval_shape(lambda: InceptionV3().init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, SIZE, SIZE, 3))))['params']


def random_params(seed: int = 0) -> dict:
  """Random InceptionV3 params for speed measurements and tests (the same computation
  as FID's): He-scaled kernels, identity batch norm, drawn in numpy from the shapes;
  initialising the network would compile it (~20 s on a CPU)."""
  rng = np.random.default_rng(seed)
  draw = {'kernel': lambda s: rng.normal(0, np.sqrt(2 / np.prod(s[:-1])), s),
          'var': np.ones, 'scale': np.ones, 'mean': np.zeros, 'bias': np.zeros}
  return jax.tree_util.tree_map_with_path(
      lambda path, x: draw[path[-1].key](x.shape).astype(np.float32), param_shapes())


def load_params(path: str) -> dict:
  """The .npz that convert_inception wrote -> params of InceptionV3, checked
  against the network's shapes."""
  expected = param_shapes()
  flat = weights.flatten(expected)
  params = weights.load(path)
  arrays = weights.flatten(params)
  missing, extra = sorted(set(flat) - set(arrays)), sorted(set(arrays) - set(flat))
  wrong = [k for k in flat if k in arrays and arrays[k].shape != flat[k].shape]
  if missing or extra or wrong:
    raise ValueError(f'{path} is not a converted FID Inception file: missing {missing[:3]}, '
                     f'unexpected {extra[:3]}, wrong shapes {wrong[:3]}; write it with '
                     'python -m sagan_jax.convert_inception')
  return params
