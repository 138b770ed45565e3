"""The configuration schema (every field, with its default) and its checks.

Config files in configs/ start from `default_config()` and override fields;
`validate` rejects anything else before a single function is compiled.
"""
import difflib

import ml_collections

from sagan_jax import device_policy
from sagan_jax.architectures import ARCHITECTURES, attention_multipliers, attention_resolutions
from sagan_jax.metrics import MIN_SAMPLES, MIN_SAMPLES_WHY
from sagan_jax.models import INITIALIZERS

LOSSES = ('hinge', 'non_saturating', 'wasserstein')
CBNS = ('tables', 'sn_linear')
STATE_UPDATES = ('once', 'every_call')
DTYPES = ('float32', 'bfloat16')
ATTENTION_VARIANTS = ('sagan', 'simple')
ATTENTION_IMPLS = ('auto', 'xla', 'blocked', 'cudnn')
RESAMPLINGS = ('auto', 'fused', 'separate')


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data
  c.dataset = 'sagan_shapes'  # TFDS name; 'sagan_shapes' and 'sagan_digits' are embedded
  c.data_dir = ''  # TFDS data dir; '' = TFDS's default (~/tensorflow_datasets)
  c.image_size = 32  # one of ARCHITECTURES: 32, 64, 128, 256
  c.num_classes = 10
  c.data_workers = -1  # Grain processes that decode; -1: none on the CPU backend (its
  #   cores run the model), half the host's cores (at most 32) with an accelerator
  c.random_flip = False  # random horizontal flips (the paper uses none)
  # Model
  c.ch = 64  # base width; block widths are multiples of it
  c.z_dim = 128
  c.attention_resolution = 16  # where G and D attend (0: nowhere)
  c.attention = 'sagan'  # 'sagan': authors' code (pooled keys/values); 'simple': paper text
  c.attention_impl = 'auto'  # 'auto' (cuDNN flash attention on GPU with bf16, 'blocked' on
  #   the CPU, else XLA), 'xla' (two einsums), 'blocked' (256 queries at a time) or 'cudnn'
  c.resampling = 'auto'  # G's upsample + conv3x3 and D's conv3x3 + avg-pool: 'fused' (one
  #   convolution at the low resolution, 4/9 of the multiply-adds; and gradients of wide,
  #   low-resolution convolutions as one matmul per tap), 'separate' (as written), 'auto'
  #   (fused on the CPU, where it was measured faster)
  c.init = 'xavier'  # 'xavier' (authors' code) or 'orthogonal' (BigGAN, StudioGAN)
  c.cbn = 'tables'  # G's class-conditional BN gain and bias: 'tables' (authors' code: per-
  #   class tables from gain 1, bias 0, no SN) or 'sn_linear' (StudioGAN, BigGAN-PyTorch:
  #   1 + SN-linear(one-hot y) and SN-linear(one-hot y), drawn by `init`)
  c.d_shortcut_relu = False  # D's later blocks feed ReLU(x) to the shortcut (a quirk of
  #   StudioGAN's in-place ReLU); False: x, as the authors' code
  c.sn_power_iterations = 1  # power iterations per update of spectral norm's u
  c.sn_eps = 1e-12  # the power iteration divides by max(||x||, sn_eps)
  c.bn_momentum = 0.999  # moving-average decay of G's batch-norm statistics. The averaged
  #   variance is the batch's biased one (flax); torch keeps the unbiased one, B/(B-1)
  #   times larger (3% at batch 32): only the raw G's samples, which use the averages, see it
  c.bn_eps = 1e-5
  c.bn_per_device = False  # G's BN statistics per device (the authors' unsynchronised
  #   GPU towers) instead of over the global batch
  c.dtype = 'float32'  # activations and matmuls: 'float32' or 'bfloat16' (parameters,
  #   optimiser state, spectral norm, BN statistics, softmax and losses stay float32)
  # Training
  c.loss = 'hinge'  # 'hinge', 'non_saturating' or 'wasserstein'
  c.batch_size = 256  # global batch, split over all devices
  c.grad_accumulation = 1  # K: each D and G step takes the mean gradient of K micro-
  #   batches of batch_size / K, one at a time (less activation memory; G's BN normalises
  #   each micro-batch, as the PyTorch peers' accumulation does)
  c.remat = False  # recompute G's and D's residual blocks in the backward pass instead of
  #   storing their activations (less memory, about a third more compute)
  c.num_d_steps = 1  # D steps (each on its own real batch) per G step
  c.g_lr = 1e-4  # TTUR: G's Adam learning rate
  c.d_lr = 4e-4  # TTUR: D's Adam learning rate
  c.adam_b1 = 0.0
  c.adam_b2 = 0.999  # authors' code (TF default); the paper says 0.9
  c.adam_eps = 1e-8  # TF's and optax's default; StudioGAN uses 1e-6
  c.state_updates = 'once'  # when spectral u advances: 'once' (authors' code: D's u once
  #   per D step, real and fake in one D call; G's once per G step) or 'every_call'
  #   (StudioGAN's PyTorch modules: D on real, then on fake, and every training-mode
  #   forward advances its network's u: D's 3 times and G's twice per iteration, and once
  #   per micro-batch forward with grad_accumulation). G's BN averages move in the G step
  #   only, either way (update.py)
  c.ema_decay = 0.9999  # EMA of G's weights (not in the paper; BigGAN's decay)
  c.ema_start_step = 20_000  # before this step the EMA copies G's weights
  c.ema_bn_batches = 16  # the EMA G's BN statistics: the mean over this many generated
  #   batches of batch_size, measured from its own weights before each use (grids,
  #   evaluation, checkpoints); BigGAN's 16 "standing statistics" accumulations
  c.num_train_steps = 1_000_000
  c.seed = 0
  c.max_nonfinite_steps = 10  # this many steps in a row with non-finite losses or
  #   gradients (each skipped) stop the run; the last checkpoint before them is kept
  # Checkpoints (workdir/checkpoints; a restart resumes from the latest)
  c.checkpoint_every_steps = 5_000
  c.checkpoints_to_keep = 3  # the latest N
  # Evaluation during training (python main.py --mode=eval evaluates any checkpoint)
  c.eval_every_steps = 0  # 0: never; else raw and EMA G, and the best EMA kept apart
  c.eval_num_samples = 10_000
  c.eval_features = ''  # 'inception' (FID, IS, KID) or 'classifier'; '': the classifier
  #   for the embedded dataset, Inception otherwise
  c.eval_intra_class = ''  # also intra-class FID of these classes: '3,5,7' or 'all'; '': no
  c.reference_dir = ''  # cached reference statistics; '': WORKDIR/reference_stats. One
  #   directory can serve many runs: fill it once with main.py --mode=reference
  c.inception_weights = ''  # the .npz of python -m sagan_jax.convert_inception
  c.classifier_weights = ''  # '': the shipped weights (sagan_jax/assets)
  # Logging and samples
  c.log_every_steps = 100
  c.sample_every_steps = 5_000  # sample grid PNGs (raw and EMA G) into workdir/samples
  c.sample_classes = 10  # rows of the grid: the first N classes
  c.samples_per_class = 8  # columns of the grid
  return c


def from_file(path: str, **overrides) -> ml_collections.ConfigDict:
  """get_config() of a config file (such as configs/imagenet128.py), with `overrides`."""
  import importlib.util
  import os
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update(overrides)
  return config


def class_indices(spec: str, num_classes: int) -> list[int]:
  """'all' or '3,5,7' -> class indices; ValueError saying what is wrong otherwise."""
  if spec == 'all':
    return list(range(num_classes))
  try:
    classes = [int(c) for c in spec.split(',')]
  except ValueError:
    raise ValueError('give class indices like 3,5,7, or all') from None
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f'class {bad[0]} is out of range; this model has {num_classes} classes, '
                     f'0 to {num_classes - 1}')
  return classes


class ConfigError(ValueError):
  """A config field with a value the program cannot run with."""


def _check(ok: bool, field: str, value, allowed: str):
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is not allowed: {allowed}')


def check_field_names(names) -> None:
  """Raises ConfigError for a name that is not a field of default_config()."""
  known = set(default_config().keys())
  for name in names:
    if name not in known:
      close = difflib.get_close_matches(name, known, n=1)
      hint = f'did you mean {close[0]!r}?' if close else f'known fields: {", ".join(sorted(known))}'
      raise ConfigError(f'config.{name} is not a known field; {hint}')


def validate(config, num_devices: int, num_processes: int = 1, platform: str = '') -> None:
  """Raises ConfigError naming the first bad field and the values it allows, for a run on
  `num_devices` devices of `platform` (device_policy.PLATFORMS; '': this host's)."""
  check_field_names(config.keys())
  c = config
  _check(c.image_size in ARCHITECTURES, 'image_size', c.image_size,
         f'one of {sorted(ARCHITECTURES)} (the sizes with an architecture)')
  allowed_attn = attention_resolutions(c.image_size)
  _check(c.attention_resolution in (0,) + allowed_attn, 'attention_resolution',
         c.attention_resolution, f'0 (none) or one of {list(allowed_attn)} at {c.image_size} px')
  _check(c.attention in ATTENTION_VARIANTS, 'attention', c.attention, f'one of {ATTENTION_VARIANTS}')
  _check(c.attention_impl in ATTENTION_IMPLS, 'attention_impl', c.attention_impl,
         f'one of {ATTENTION_IMPLS}')
  if c.attention_impl == 'cudnn':
    _check(device_policy.cudnn_attention_allowed(c, platform or device_policy.platform_of()),
           'attention_impl', c.attention_impl,
           "'auto' or 'xla': cuDNN attention needs an NVIDIA GPU and dtype='bfloat16'")
  _check(c.resampling in RESAMPLINGS, 'resampling', c.resampling, f'one of {RESAMPLINGS}')
  _check(c.init in INITIALIZERS, 'init', c.init, f'one of {tuple(INITIALIZERS)}')
  _check(c.loss in LOSSES, 'loss', c.loss, f'one of {LOSSES}')
  _check(c.cbn in CBNS, 'cbn', c.cbn, f'one of {CBNS}')
  _check(c.state_updates in STATE_UPDATES, 'state_updates', c.state_updates,
         f'one of {STATE_UPDATES}')
  _check(c.dtype in DTYPES, 'dtype', c.dtype, f'one of {DTYPES}')
  _check(c.ch >= 1, 'ch', c.ch, 'a positive integer')
  if c.attention_resolution:
    # Widths at the attention block must split into C/8 queries and keys.
    widths = [c.ch * m for m in attention_multipliers(c.image_size, c.attention_resolution)]
    _check(all(w % 8 == 0 for w in widths), 'ch', c.ch,
           f'a width that makes the attention widths {widths} multiples of 8 (try a multiple of 8)')
  for field in ('num_classes', 'z_dim', 'num_d_steps', 'sn_power_iterations', 'num_train_steps',
                'log_every_steps', 'sample_every_steps', 'sample_classes', 'samples_per_class',
                'checkpoint_every_steps', 'checkpoints_to_keep',
                'max_nonfinite_steps', 'ema_bn_batches'):
    _check(c[field] >= 1, field, c[field], 'a positive integer')
  for field in ('g_lr', 'd_lr', 'sn_eps', 'bn_eps', 'adam_eps'):
    _check(c[field] > 0, field, c[field], 'a positive number')
  for field in ('adam_b1', 'adam_b2', 'ema_decay', 'bn_momentum'):
    _check(0 <= c[field] < 1, field, c[field], 'a number in [0, 1)')
  _check(c.data_workers >= -1, 'data_workers', c.data_workers, '-1 (automatic) or a count >= 0')
  _check(c.ema_start_step >= 0, 'ema_start_step', c.ema_start_step, 'an integer >= 0')
  _check(c.eval_every_steps >= 0, 'eval_every_steps', c.eval_every_steps, 'an integer >= 0')
  _check(c.eval_num_samples >= MIN_SAMPLES, 'eval_num_samples', c.eval_num_samples,
         f'an integer >= {MIN_SAMPLES} ({MIN_SAMPLES_WHY})')
  _check(c.eval_features in ('', 'inception', 'classifier'), 'eval_features', c.eval_features,
         "'', 'inception' or 'classifier'")
  if c.eval_intra_class:
    try:
      class_indices(c.eval_intra_class, c.num_classes)
    except ValueError as e:
      raise ConfigError(f'config.eval_intra_class={c.eval_intra_class!r}: {e}') from None
    _check(c.eval_num_samples >= 2 * c.num_classes, 'eval_num_samples', c.eval_num_samples,
           f'at least 2 samples per class ({2 * c.num_classes}) for intra-class FID')
  _check(c.batch_size >= 1 and c.batch_size % num_devices == 0, 'batch_size', c.batch_size,
         f'a positive multiple of the device count ({num_devices})')
  _check(c.batch_size % num_processes == 0, 'batch_size', c.batch_size,
         f'a multiple of the process count ({num_processes}): each process loads an equal part')
  _check(c.grad_accumulation >= 1, 'grad_accumulation', c.grad_accumulation,
         'a positive integer')
  k = c.grad_accumulation
  _check(c.batch_size % (k * num_devices) == 0, 'batch_size', c.batch_size,
         f'a multiple of grad_accumulation x devices ({k} x {num_devices} = {k * num_devices}):'
         ' each micro-batch splits over every device')
