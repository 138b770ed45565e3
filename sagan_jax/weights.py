"""Weight files of the fixed networks of evaluation (Inception, the classifier): one .npz
of arrays named by their '/'-joined parameter path, read without pickle. A leaf module,
so that those networks depend on nothing of the GAN."""
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath


def flatten(params) -> dict:
  return {'/'.join(p.key for p in path): x
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def save(params, path: str) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flatten(params).items()})


def load(path: str) -> dict:
  """The nested params of a file save (or convert_inception) wrote."""
  params = {}
  with epath.Path(path).open('rb') as f, np.load(f, allow_pickle=False) as arrays:
    for key, value in arrays.items():
      node = params
      *parents, leaf = key.split('/')
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = jnp.asarray(value)
  return params
