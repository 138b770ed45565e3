"""Generator and discriminator: shapes, variable trees, parameter counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from sagan_jax import train_state
from sagan_jax.config import default_config
from sagan_jax.models import Discriminator, Generator, make_models


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_variables(generator, discriminator, image_size, z_dim=128):
  y = jnp.zeros((2,), jnp.int32)
  g = jax.eval_shape(lambda: generator.init(jax.random.PRNGKey(0), jnp.zeros((2, z_dim)), y,
                                            train=False))
  d = jax.eval_shape(lambda: discriminator.init(
      jax.random.PRNGKey(0), jnp.zeros((2, image_size, image_size, 3)), y))
  return g, d


def test_imagenet128_parameter_counts_are_exact():
  c = default_config()
  c.update(dict(image_size=128, num_classes=1000, ch=64, attention_resolution=64))
  g, d = _abstract_variables(*make_models(c), 128)
  assert _count(g['params']) == 42_017_412
  assert _count(d['params']) == 39_448_258
  # Attention at 64x64: 128 channels in G, 64 in D; pooled C/8 keys, C/2 values.
  assert g['params']['attention']['theta']['kernel'].shape == (1, 1, 128, 16)
  assert g['params']['attention']['g']['kernel'].shape == (1, 1, 128, 64)
  assert d['params']['attention']['o']['kernel'].shape == (1, 1, 32, 64)
  # About 9.86M of G's parameters are class-conditional BN tables.
  cbn = sum(_count(v) for path, v in jax.tree_util.tree_flatten_with_path(g['params'])[0]
            if 'cbn' in jax.tree_util.keystr(path))
  assert cbn == 9_856_000


def test_spectral_state_covers_every_weight_but_the_bn_tables():
  c = default_config()
  g, d = _abstract_variables(*make_models(c), c.image_size)
  for variables in (g, d):
    flat = {jax.tree_util.keystr(p): x for p, x in
            jax.tree_util.tree_flatten_with_path(variables['params'])[0]}
    weights = {k.rsplit('[', 1)[0] for k, x in flat.items() if len(x.shape) > 1 and 'cbn' not in k}
    u = {jax.tree_util.keystr(p).rsplit('[', 1)[0]: x for p, x in
         jax.tree_util.tree_flatten_with_path(variables['spectral'])[0]}
    assert weights == set(u)
    for k, x in u.items():
      assert x.shape == (1, [w for n, w in flat.items() if n.startswith(k)][0].shape[-1])
  assert 'batch_stats' in g and 'batch_stats' not in d


@pytest.mark.parametrize('image_size, attention', [(32, 16), (64, 32), (128, 8)])
def test_output_shapes(image_size, attention):
  g = Generator(image_size, num_classes=3, ch=8, attention_resolution=attention)
  d = Discriminator(image_size, num_classes=3, ch=8, attention_resolution=attention)
  z, y = jax.random.normal(jax.random.PRNGKey(0), (2, 16)), jnp.array([0, 2])
  gv, dv = _abstract_variables(g, d, image_size, z_dim=16)
  images = jax.eval_shape(lambda v: g.apply(v, z, y, train=False), gv)
  assert images.shape == (2, image_size, image_size, 3)
  assert jax.eval_shape(lambda v, x: d.apply(v, x, y), dv, images).shape == (2,)
  assert gv['params']['attention']['theta']['kernel'].shape[2] == 8 * (
      {32: 4, 64: 4, 128: 16}[image_size])


def test_tiny_models_run(tiny):
  c = tiny.config
  state = tiny.new_state()
  z = jax.random.normal(jax.random.PRNGKey(1), (4, c.z_dim))
  y = jnp.arange(4) % c.num_classes
  variables = train_state.generator_variables(state, ema=False)
  images = tiny.generator.apply(variables, z, y, train=False)
  assert images.shape == (4, 32, 32, 3) and float(jnp.max(jnp.abs(images))) <= 1.0
  logits = tiny.discriminator.apply({'params': state.d_params, 'spectral': state.d_spectral},
                                    images, y)
  assert logits.shape == (4,) and bool(jnp.all(jnp.isfinite(logits)))


def test_both_resampling_paths_compile_and_agree():
  """'fused' (the CPU's 'auto') and 'separate' (elsewhere) give the same G and D, up to
  float rounding, with the same variables: one checkpoint serves both."""
  config = default_config()
  config.update(image_size=32, ch=8, num_classes=3, attention_resolution=16)
  z, y = jax.random.normal(jax.random.PRNGKey(0), (4, config.z_dim)), jnp.array([0, 1, 2, 0])
  outputs = {}
  for name in ('separate', 'fused'):
    config.resampling = name
    g, d = make_models(config)
    gv = g.init(jax.random.PRNGKey(1), z, y, train=True)
    dv = d.init(jax.random.PRNGKey(2), jnp.zeros((4, 32, 32, 3)), y)
    images, _ = jax.jit(lambda v: g.apply(v, z, y, train=True, mutable=['batch_stats']))(gv)
    outputs[name] = images, jax.jit(d.apply)(dv, images, y), gv, dv
  (i0, l0, g0, d0), (i1, l1, g1, d1) = outputs['separate'], outputs['fused']
  assert jax.tree.structure(g0) == jax.tree.structure(g1)
  assert jax.tree.structure(d0) == jax.tree.structure(d1)
  np.testing.assert_allclose(i1, i0, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(l1, l0, rtol=1e-4, atol=1e-4)


def test_sn_linear_cbn_gives_each_class_its_own_normalised_gain_and_bias():
  """cbn='sn_linear' (StudioGAN): BN(x) (1 + W_g[y] / sigma_g) + W_b[y] / sigma_b, with
  the tables drawn by `init` and spectrally normalised; soft labels mix the rows.
  'tables' (the default) starts every class at gain 1 and bias 0."""
  from sagan_jax.layers import ConditionalBatchNorm, sigma
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 16))
  y = jnp.array([0, 1, 2, 0, 1, 2])
  cbn = ConditionalBatchNorm(3, gain_bias='sn_linear', kernel_init=nn.initializers.orthogonal())
  variables = cbn.init(jax.random.PRNGKey(1), x, y, train=True)
  out, _ = cbn.apply(variables, x, y, train=True, mutable=['batch_stats'])
  p, u = variables['params'], variables['spectral']
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  normed = (x - mean) / jnp.sqrt(var + 1e-5)
  table = lambda name: p[name]['embedding'] / sigma(p[name]['embedding'], u[name]['u'])
  rows = lambda name: table(name)[y]
  want = normed * (1 + rows('gain'))[:, None, None] + rows('bias')[:, None, None]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
  # Orthogonal rows: every class differs from the others from the first step.
  rows_g = np.asarray(p['gain']['embedding'])
  np.testing.assert_allclose(rows_g @ rows_g.T, np.eye(3), atol=1e-5)
  soft = jnp.eye(3)[y] * 0.5 + jnp.eye(3)[(y + 1) % 3] * 0.5
  mixed, _ = cbn.apply(variables, x, soft, train=True, mutable=['batch_stats'])
  gain, bias = soft @ table('gain'), soft @ table('bias')
  np.testing.assert_allclose(mixed, normed * (1 + gain)[:, None, None] + bias[:, None, None],
                             rtol=1e-4, atol=1e-5)
  tables = ConditionalBatchNorm(3).init(jax.random.PRNGKey(1), x, y, train=True)
  assert 'spectral' not in tables
  np.testing.assert_array_equal(tables['params']['gain'], np.ones((3, 16)))


def test_d_shortcut_relu_feeds_relu_x_to_later_blocks_shortcuts():
  """d_shortcut_relu (StudioGAN's in-place ReLU): the same D for a non-negative input
  to every later block, another one otherwise; the parameters are the same."""
  import functools
  from sagan_jax.layers import SNConv
  from sagan_jax.models import DBlock
  conv = functools.partial(SNConv)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  blocks = [DBlock(8, conv, True, preactivation=True, shortcut_relu=r) for r in (False, True)]
  variables = blocks[0].init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(variables) == jax.tree.structure(
      blocks[1].init(jax.random.PRNGKey(1), x))
  outs = [b.apply(variables, x) for b in blocks]
  assert not np.allclose(outs[0], outs[1])
  positive = [b.apply(variables, jnp.abs(x)) for b in blocks]
  np.testing.assert_array_equal(positive[0], positive[1])
  # The shortcut of the StudioGAN form is the shortcut conv of ReLU(x), pooled.
  first = [DBlock(8, conv, True, preactivation=False, shortcut_relu=r) for r in (False, True)]
  np.testing.assert_array_equal(first[0].apply(variables, x), first[1].apply(variables, x))
