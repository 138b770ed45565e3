"""The accelerator check: one command that measures, on whatever device it runs on,
what a CPU cannot tell us, within a time budget, for a GPU lent for minutes.

  python benchmarks/accelerator_check.py --out=DIR                # a GPU or TPU: ~9 minutes
  python benchmarks/accelerator_check.py --tiny --out=DIR         # tiny configs (the test)

DIR/check.json holds every number (rewritten after each measurement, so a run killed
at its limit keeps what it measured); DIR/check.log is the readable log. Parts, the
most wanted first; each records its numbers, or 'skipped' with the reason (the
budget ran out, the device cannot), or 'error' with the error, and the others run on:

  attention  cuDNN flash attention against XLA's (bf16, forward and gradient), each
             against a float32 reference; their speed.
  step       the configs/imagenet128.py train step at the paper's batch 256 in float32
             (XLA attention) and bfloat16 (XLA and cuDNN attention), and at batch 64:
             compile time, ms/step, images/s, MFU against a matmul peak measured here,
             XLA's memory estimate and the device's peak memory.
  fid        the 50,000-sample Inception pass at 128 px, sampling included (random
             Inception weights and G: the speed, not the value).
  learning   configs/quickstart.py (the digits, made in memory) trained for
             --train_minutes in float32, then as many steps in bfloat16, each scored like
             the quickstart's evaluation (shipped classifier, 5,000 samples, raw and EMA G);
             with --tiny, 400 steps of 8 channels at 5x the learning rates, 512 samples.
  max_batch  the largest batch per device that compiles and runs at 128 px, per dtype
             (from XLA's memory estimates where the device gives a limit, then probes).
  devices    one step on 1 device and on all devices: the same losses (needs 2 devices).

Imports nothing from TensorFlow, TFDS, clu or grain (a lent machine lacks them): the
wheels it needs beyond jax, flax, optax and orbax are listed in docs/performance.md.
"""
import argparse
import concurrent.futures
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from sagan_jax import (digits_dataset, evaluation, inception, sampling,  # noqa: E402
                       weights)
from sagan_jax.config import ConfigError, from_file, validate  # noqa: E402
from timing import matmul_peak, synthetic_batch, time_steps, timed  # noqa: E402
from sagan_jax.layers import SelfAttention, attention  # noqa: E402
from sagan_jax.mesh import make_mesh  # noqa: E402
from sagan_jax.device_policy import attention_implementation, platform_of  # noqa: E402
from sagan_jax.models import make_models  # noqa: E402
from sagan_jax.train_state import generator_variables  # noqa: E402
from sagan_jax import memory as step_memory_of  # noqa: E402
from sagan_jax.update import Update  # noqa: E402

log = logging.getLogger('accelerator_check')
GIB = 2**30


# Published dense peaks (FLOP/s) and HBM bandwidth of the GPUs a lent machine has; the
# datasheets give the tensor cores' figures "with sparsity", twice the dense ones.
_HOPPER = dict(bfloat16=989.4e12, tf32=494.7e12, float32=66.9e12)  # the same compute
PUBLISHED = {
    'H100': dict(_HOPPER, hbm_bytes_per_s=3.35e12,
                 source='NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16 1,979 and TF32 '
                        '989 TFLOPS with sparsity, FP32 67 TFLOPS, 3.35 TB/s'),
    'H200': dict(_HOPPER, hbm_bytes_per_s=4.8e12,
                 source='NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 1,979 and TF32 '
                        '989 TFLOPS with sparsity, FP32 67 TFLOPS, 4.8 TB/s'),
}


def published_peaks(device_kind: str, dtype: str) -> dict:
  """{name: FLOP/s} of the published dense peaks that a step in `dtype` is measured
  against: bf16 for bfloat16; TF32 (what XLA's default precision runs float32 matmuls
  in on these GPUs) and plain FP32 for float32. {} for a device not in PUBLISHED (the
  PCIe H100's figures differ from the SXM's)."""
  name = next((k for k in PUBLISHED if k in device_kind), None)
  if name is None or 'PCIe' in device_kind:
    return {}
  chip = PUBLISHED[name]
  keys = ('bfloat16',) if dtype == 'bfloat16' else ('tf32', 'float32')
  return {f'{name}_{k}_dense': chip[k] for k in keys}


def attention_inputs(update) -> dict:
  """{'G': [...], 'D': [...]}: (N, M, d, v) per example of each SelfAttention of the two
  networks, traced from their shapes (nothing computed)."""
  found = {'G': [], 'D': []}
  net = 'G'

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, SelfAttention) and context.method_name == '__call__':
      _, h, w, c = args[0].shape
      n = h * w
      sagan = context.module.variant == 'sagan'
      found[net].append((n, n // 4 if sagan else n, c // 8, c // 2 if sagan else c))
    return next_fun(*args, **kwargs)

  c, y = update.config, jnp.zeros((1,), jnp.int32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: update.generator.init(jax.random.PRNGKey(0), jnp.zeros((1, c.z_dim)),
                                                 y, train=False))
    net = 'D'
    jax.eval_shape(lambda: update.discriminator.init(
        jax.random.PRNGKey(0), jnp.zeros((1, c.image_size, c.image_size, 3)), y))
  return found


def attention_flops(update) -> float:
  """The FLOPs of one train step's attention matmuls (theta phi^T and beta g), all
  devices together, counted from the shapes: a forward 2 N M (d + v) per example, its
  backward twice that. XLA's cost analysis counts cuDNN's attention (a custom call) as no
  FLOPs; the step part adds this for it. Each D step runs G forward on B (no gradient)
  and D forward and backward on 2B (reals and fakes); the G step G and D forward and
  backward on B."""
  c = update.config
  forward = {k: sum(2 * n * m * (d + v) for n, m, d, v in shapes)
             for k, shapes in attention_inputs(update).items()}
  g, d = forward['G'], forward['D']
  return c.batch_size * (c.num_d_steps * (g + 3 * 2 * d) + 3 * g + 3 * d)


# The plan of the full check on one H100/H200 before anything is measured (--dry_run prints
# it): seconds per part, compile included, each from the stated guess; `minimum` is the
# smallest useful piece of the part, below which it is skipped. Once a part measures
# something (a compile, a probe, the first FID batches), its later pieces are checked
# against what it measured instead.
STEP_VARIANTS = (('big', 'bfloat16', 'cudnn'), ('big', 'float32', 'xla'), ('small', 'bfloat16',
                 'cudnn'), ('big', 'bfloat16', 'xla'), ('small', 'float32', 'xla'))
STEP_SHARE = 0.4  # of the budget left when the step part starts
COMPILE_S = 60  # one imagenet128 train step program on the lent host's 16 cores: a guess
STEP_S = {'bfloat16': 0.12, 'float32': 0.25}  # batch 256: its 36 TFLOP at ~30% of the peak
ESTIMATES = {  # part: (minimum, full, basis)
    'device': (10, 10, 'two 8192^2 matmuls, 11 times each'),
    'attention': (20, 30, 'four small programs compiled and timed'),
    'step': (COMPILE_S + 12 * STEP_S['bfloat16'],
             sum(COMPILE_S * (1 if size == 'big' else 0.7) + 12 * STEP_S[dtype] *
                 (1 if size == 'big' else 0.25) for size, dtype, _ in STEP_VARIANTS),
             'five variants, each a compile and 12 steps'),
    'fid': (45, 30 + 30 + 50, "G's and Inception's compile, 50,000 images through both, then "
            'the host statistics, which grow with n: covariances 2 x 2048^2 and k-NN '
            '2 x 10,000 x 2048 FLOP a sample at ~50 GFLOP/s'),
    'learning': (90, 2 * 60 + 2 * 15 + 4 * 10, '--train_minutes (1) per dtype, two compiles, '
                 'four scorings of 5,000 samples'),
    'max_batch': (COMPILE_S + 5, 6 * (COMPILE_S + 5), 'per dtype ~3 probes, each a compile and '
                  'two steps'),
    'devices': (20, 2 * 20, 'two tiny compiles (skipped on one GPU)'),
}


def plan(parts, budget_s: float) -> list[str]:
  """The lines of --dry_run: each part's estimate and whether the budget reaches it."""
  lines, spent = [f'budget {budget_s:.0f} s; estimates for one H100/H200 before measuring:'], 0.0
  for name in parts:
    minimum, full, basis = ESTIMATES[name]
    left = budget_s - spent
    if name == 'step':  # it takes at most its share of what is left (step_part)
      full = max(min(full, STEP_SHARE * left), minimum)
    verdict = ('runs' if left >= full else f'runs in part ({left:.0f} s left)' if left >= minimum
               else f'skipped ({left:.0f} s left, needs ~{minimum:.0f})')
    spent += min(full, max(left, 0)) if left >= minimum else 0
    lines.append(f'  {name:10s} ~{full:4.0f} s (at least {minimum:.0f}): {verdict}; {basis}')
  lines.append(f'  planned {spent:.0f} s of {budget_s:.0f}')
  return lines


class Skip(Exception):
  """A part, or one of its measurements, that cannot run here: the reason."""


def load_config(name: str, **overrides):
  return from_file(os.path.join(ROOT, 'configs', name + '.py'), **overrides)


class Check:
  """The budget, the results and their file."""

  def __init__(self, args):
    self.args, self.deadline = args, time.monotonic() + args.budget_minutes * 60
    self.on_gpu = platform_of() == 'nvidia_gpu'
    self._peaks = {}  # dtype -> the matmul's FLOP/s (matmul_peak)
    self.results = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(' ', 'seconds'),
                    'command': ' '.join(sys.argv), 'tiny': args.tiny, 'parts': {}}
    # Sizes: the paper's on a device, a few channels and pixels with --tiny, where the FID
    # pass is 4 images (Inception at 299 px costs ~0.1 s of CPU an image; precision needs
    # k_pr + 1 = 4) and the learning part's reference 1,000 of the 4,000 training digits;
    # its G learns enough in 400 steps that 512 samples tell it from chance.
    self.sizes = dict(big=16, small=8, fid_samples=4, fid_batch=4, fid_reference=256,
                      eval_samples=512, eval_reference=1000, ema_bn_batches=2,
                      steps=3, learning_steps=400) if args.tiny else dict(
                      big=256, small=64, fid_samples=50_000, fid_batch=256,
                      fid_reference=evaluation.KID_FEATURES, eval_samples=5_000,
                      eval_reference=None, ema_bn_batches=16, steps=10)

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def matmul_peak(self, dtype: str) -> float:
    """FLOP/s of a large matmul in `dtype` on the first device, measured once (by the
    device part, or by the first part that needs it if that one failed)."""
    if dtype not in self._peaks:
      self._peaks[dtype] = matmul_peak(jnp.dtype(dtype), 512 if self.args.tiny else 8192)
    return self._peaks[dtype]

  def save(self):
    path = os.path.join(self.args.out, 'check.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(self.results, f, indent=1, default=float)
    os.replace(path + '.tmp', path)

  def run(self, name: str, part, min_seconds: float):
    """Runs part(record) unless less than min_seconds (its estimate's minimum) are left;
    record(key, value) stores a number (and saves the file) as it is measured."""
    out = self.results['parts'][name] = {}
    record = lambda key, value: (out.__setitem__(key, value), self.save())
    start = time.monotonic()
    try:
      if self.left() < min_seconds:
        raise Skip(f'{self.left():.0f} s of the budget left, the part needs ~{min_seconds:.0f}')
      log.info('part %s (%.0f s of the budget left)', name, self.left())
      part(record)
      out['status'] = 'ok'
    except Skip as e:
      out.update(status='skipped', reason=str(e))
    except Exception as e:  # noqa: BLE001 (a failing part must not stop the others)
      out.update(status='error', error=f'{type(e).__name__}: {e}'[:2000],
                 traceback=traceback.format_exc()[-3000:])
    out['seconds'] = round(time.monotonic() - start, 1)
    log.info('part %s: %s (%.0f s) %s', name, out['status'], out['seconds'],
             out.get('reason', out.get('error', '')))
    self.save()



def device_part(check, record):
  device = jax.devices()[0]
  record('kind', f'{jax.device_count()} x {device.device_kind}')
  record('platform', device.platform)
  record('versions', {p: importlib.metadata.version(p) for p in (
      'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint')})
  stats = device.memory_stats() or {}
  record('memory_limit_gib', round(stats['bytes_limit'] / GIB, 2) if 'bytes_limit' in stats
         else None)
  record('matmul_peak_tflop_s', {d: round(check.matmul_peak(d) / 1e12, 4)
                                 for d in ('float32', 'bfloat16')})


def attention_part(check, record):
  """cuDNN's flash attention against XLA's two einsums, on one attention of ImageNet-128's
  G at 64x64 (values 128 wide); on a CPU, with --tiny, the CPU's blocked attention at
  32x32 instead (the same comparison, so that it is tested)."""
  other = 'cudnn' if check.on_gpu else 'blocked'
  if other == 'blocked' and not check.args.tiny:
    raise Skip(f'cuDNN attention needs an NVIDIA GPU; this is {jax.devices()[0].platform}')
  b, n, m, d, v = (2, 32 * 32, 16 * 16, 8, 32) if check.args.tiny else (8, 64 * 64, 32 * 32, 32,
                                                                       128)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  theta, phi = (jax.random.normal(k, (b, s, d)) for k, s in zip(keys[:2], (n, m)))
  g, weight = jax.random.normal(keys[2], (b, m, v)), jax.random.normal(keys[3], (b, n, v))

  def value_and_grad(impl, dtype):
    f = lambda t, p, x: jnp.sum(attention(t, p, x, impl).astype(jnp.float32) * weight)
    grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    args = [a.astype(dtype) for a in (theta, phi, g)]
    out = jax.jit(lambda *a: attention(*a, impl))(*args)
    return out, grad(*args)[1], grad, args

  reference, ref_grads, _, _ = value_and_grad('xla', jnp.float32)
  scale = lambda x: float(jnp.max(jnp.abs(x)))
  errors = {}
  for impl in ('xla', other):
    out, grads, grad, args = value_and_grad(impl, jnp.bfloat16)
    errors[impl] = {
        'max_error_vs_f32': round(scale(out.astype(jnp.float32) - reference) / scale(reference), 5),
        'grad_max_error_vs_f32': round(max(
            scale(a.astype(jnp.float32) - r) / scale(r) for a, r in zip(grads, ref_grads)), 5)}
    record(impl, {**errors[impl], 'ms_forward_and_backward': round(
        float(np.median(timed(grad, *args, repeats=3 if check.args.tiny else 10))) * 1e3, 3)})
  # Agreement: the other path's bf16 error within twice XLA's own bf16 error (1e-2 at least).
  record('agree', all(errors[other][k] <= max(2 * errors['xla'][k], 1e-2) for k in errors['xla']))


def step_config(check, batch_size: int, dtype: str, attention_impl: str):
  """configs/imagenet128.py at `batch_size`, `dtype`, `attention_impl`; with --tiny the
  learning part's config instead (8 channels at 32 px), so that every part shares its
  compiled steps: compiling is most of --tiny's time."""
  if check.args.tiny:
    config = learning_config(check, dtype)
    config.update(batch_size=batch_size, attention_impl=attention_impl)
  else:
    config = load_config('imagenet128', batch_size=batch_size, dtype=dtype,
                         attention_impl=attention_impl)
  validate(config, jax.device_count())
  return config


# XLA compiles without holding the GIL: with --tiny every step program is started here
# at once (compiling is most of --tiny's time); the full check waits for each where it is
# measured, so that nothing compiles while a step is timed.
_POOL = concurrent.futures.ThreadPoolExecutor(2)
_COMPILED = {}  # (config, devices) -> Future of (update, compiled step, compile seconds)
_INITIAL = {}  # config but dtype, batch and attention path -> Future of the state on the host


def initial_ahead(update):
  """Starts update.initial_state(seed) unless it was (a Future of the state on the host): once
  for all the configs that differ only in the compute dtype, batch size or attention
  path (the state does not depend on them: parameters are float32 in every dtype)."""
  c = {k: v for k, v in update.config.to_dict().items()
       if k not in ('dtype', 'batch_size', 'attention_impl')}
  key = json.dumps(c, sort_keys=True, default=str)
  if key not in _INITIAL:
    _INITIAL[key] = _POOL.submit(lambda: jax.device_get(update.initial_state(update.config.seed)))
  return _INITIAL[key]


def initial_state(update):
  """The initial state (initial_ahead) on update's mesh."""
  state = initial_ahead(update).result()
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(state) == shapes(update.state_shapes()), 'the initial state depends on the dtype'
  return jax.device_put(state, NamedSharding(update.mesh, P()))


def _compile(config, mesh):
  update = Update(config, *make_models(config), mesh)
  start = time.perf_counter()
  step = update.jitted().lower(update.state_shapes(), synthetic_batch(config, mesh)).compile()
  return update, step, time.perf_counter() - start


def compile_ahead(config, mesh):
  """Starts compiling config's step for mesh unless it was (a Future)."""
  key = (json.dumps(config.to_dict(), sort_keys=True, default=str),
         tuple(d.id for d in mesh.devices.flat))
  if key not in _COMPILED:
    _COMPILED[key] = _POOL.submit(_compile, config, mesh)
  return _COMPILED[key]


def compiled_step(config, mesh):
  """(update, initial state, synthetic batch, compiled step, compile seconds); a step
  compiled once for a config and mesh serves every part."""
  update, step, seconds = compile_ahead(config, mesh).result()
  return update, initial_state(update), synthetic_batch(config, mesh), step, seconds


def measure_step(check, config, mesh) -> dict:
  """One step variant's speed, FLOPs and memory, with the device facts it is measured
  against recorded here (a failed device part loses nothing of it)."""
  update, state, batch, step, compile_s = compiled_step(config, mesh)
  cost = step.cost_analysis()
  cost_flops = float((cost[0] if isinstance(cost, list) else cost)['flops'])  # per device
  impl = attention_implementation(config, platform_of())
  attention_per_device = attention_flops(update) / mesh.size
  # cuDNN's attention is a custom call: XLA's count leaves its FLOPs out.
  flops = cost_flops + (attention_per_device if impl == 'cudnn' else 0.0)
  memory = step_memory_of.of(step).as_dict()
  state, metrics, times = time_steps(step, state, batch, check.sizes['steps'])
  step_s = float(np.median(times))
  device = jax.devices()[0]
  peaks = {'matmul_peak_measured_here': check.matmul_peak(config.dtype),
           **published_peaks(device.device_kind, config.dtype)}
  stats = device.memory_stats() or {}
  return {'attention': impl, 'device_kind': device.device_kind, 'devices': mesh.size,
          'compile_s': round(compile_s, 1), 'ms_per_step': round(step_s * 1e3, 2),
          'ms_per_step_min_max': [round(min(times) * 1e3, 2), round(max(times) * 1e3, 2)],
          'images_per_s': round(config.batch_size * config.num_d_steps / step_s, 1),
          'gflop_per_step_per_device': round(flops / 1e9, 4),
          'gflop_cost_analysis': round(cost_flops / 1e9, 4),
          'attention_gflop_from_shapes': round(attention_per_device / 1e9, 4),
          'flops_counted': ('XLA cost analysis + the attention counted from its shapes (a '
                            'custom call)' if impl == 'cudnn' else 'XLA cost analysis'),
          'peak_tflop_s': {k: round(v / 1e12, 4) for k, v in peaks.items()},
          'mfu': {k: round(flops / step_s / v, 4) for k, v in peaks.items()},
          'memory_estimate_gib': {k: round(v / GIB, 3) for k, v in memory.items()},
          # The device's counter is the process's peak so far (it cannot be reset).
          'device_peak_gib_so_far': (round(stats['peak_bytes_in_use'] / GIB, 3)
                                     if 'peak_bytes_in_use' in stats else None),
          'finite': bool(np.isfinite(float(metrics['d_loss'])))}


def step_part(check, record):
  mesh = make_mesh()
  share = check.left() * STEP_SHARE  # of what is left: the other parts follow
  stop = time.monotonic() + share
  for size, dtype, impl in STEP_VARIANTS:
    if check.args.tiny and size == 'small':  # the same code at another batch
      continue
    batch_size = check.sizes[size]
    name = f'batch{batch_size}_{dtype}_{impl}'
    if time.monotonic() > stop:
      record(name, {'skipped': f'the step part\'s share of the budget ({share:.0f} s) is spent'})
      continue
    try:
      config = step_config(check, batch_size, dtype, impl)
    except ConfigError as e:
      record(name, {'skipped': str(e)})
      continue
    try:
      record(name, measure_step(check, config, mesh))
    except Exception as e:  # noqa: BLE001 (e.g. out of memory: the next variant still runs)
      record(name, {'error': f'{type(e).__name__}: {e}'[:1000]})
    log.info('step %s: %s', name, check.results['parts']['step'][name])


def fid_part(check, record):
  """The 50,000-sample Inception pass as an evaluation runs it (G, Inception at 299 px,
  the statistics on the host), G in the dtype the step measured fastest: bfloat16."""
  s, mesh = check.sizes, make_mesh()
  dtype = 'bfloat16' if jax.default_backend() != 'cpu' else 'float32'
  config = step_config(check, s['small'], dtype, 'auto')
  update = Update(config, *make_models(config), mesh)
  generator, variables = update.generator, generator_variables(initial_state(update), ema=True)
  path = os.path.join(check.args.out, 'random_inception.npz')
  weights.save(inception.random_params(), path)
  extractor = evaluation.Extractor('inception', path, mesh, config.num_classes)
  os.remove(path)
  rng = np.random.default_rng(0)
  reference = {'mu': np.zeros(2048), 'sigma': np.eye(2048), 'diversity': 1.0,
               'features': rng.normal(size=(s['fid_reference'], 2048))}
  images = sampling.ImageSampler(generator, mesh)
  run = lambda num: evaluation.evaluate(images, variables, config, extractor, reference, num,
                                        s['fid_batch'])
  start = time.perf_counter()
  run(s['fid_batch'])  # compiles G and Inception for this batch size
  record('compile_and_first_batch_s', round(time.perf_counter() - start, 1))
  # What to expect, compiled: the batches through G and Inception at the measured rate,
  # plus the host statistics, which grow with n: the covariance (2 x 2048^2 FLOP a sample)
  # and the k-NN of up to KID_FEATURES samples among themselves and against the reference
  # (float64, at the host's measured matmul rate), plus what a run costs besides.
  start = time.perf_counter()
  run(s['fid_batch'])
  whole = time.perf_counter() - start
  start = time.perf_counter()
  extractor(evaluation.generate(images, variables, config, s['fid_batch'], s['fid_batch'], 0)[0],
            s['fid_batch'])
  batch = time.perf_counter() - start
  rate = host_flops()
  host = lambda n: (2 * n * 2048**2 + 2 * min(n, evaluation.KID_FEATURES) * (
      min(n, evaluation.KID_FEATURES) + s['fid_reference']) * 2048) / rate
  other = max(whole - batch - host(s['fid_batch']), 0)
  expected = s['fid_samples'] / s['fid_batch'] * batch + host(s['fid_samples']) + other
  record('host_gflop_s', round(rate / 1e9, 1))
  record('expected_host_statistics_s', round(host(s['fid_samples']), 1))
  record('expected_s', round(expected, 1))
  if expected > check.left():
    raise Skip(f'{s["fid_samples"]} samples would take ~{expected:.0f} s (the first batch\'s '
               f'rate and the host statistics), {check.left():.0f} s are left')
  result = run(s['fid_samples'])
  record('num_samples', s['fid_samples'])
  record('g_dtype', dtype)
  record('eval_seconds', round(result['seconds'], 1))
  for key in ('generate_images_per_s', 'score_images_per_s'):
    record(key, round(result[key], 1))
  record('images_per_s_end_to_end', round(s['fid_samples'] / result['seconds'], 1))


def host_flops() -> float:
  """FLOP/s of a float64 matmul on the host (numpy), the fastest of three."""
  a = np.ones((1024, 1024))
  return 2 * 1024**3 / min(timed(np.matmul, a, a, repeats=3))


# The EMA G's class accuracy of configs/quickstart.py in float32 over 10 seeds (min, max).
SEED_SPREAD = (0.797, 0.992)
SEED_SPREAD_SOURCE = ('10 seeds of configs/quickstart.py, 1,000 steps each, on a 2-core CPU '
                      '(BENCHMARKS.md, "The quickstart\'s learning")')


def learning_config(check, dtype: str):
  """configs/quickstart.py in `dtype`, XLA's attention in both dtypes (cuDNN's has no
  float32: with 'auto' the two dtypes would differ in more than the dtype). With --tiny:
  8 channels, batch 16, 5x the learning rates, with which 400 steps lift the class
  accuracy clearly above chance (20-29%, both dtypes and G's, 512 samples), and the
  authors' one D call: StudioGAN's three (state_updates='every_call') learn as well here
  (21-32%, 3 seeds) in 40% more time per step."""
  s = check.sizes
  tiny = dict(ch=8, batch_size=s['big'], g_lr=1e-3, d_lr=2e-3, state_updates='once',
              ema_start_step=s['learning_steps'] * 4 // 5) if check.args.tiny else {}
  config = load_config('quickstart', dtype=dtype, eval_num_samples=s['eval_samples'],
                       ema_bn_batches=s['ema_bn_batches'], attention_impl='xla', **tiny)
  validate(config, jax.device_count())
  return config


def learning_part(check, record):
  """The quickstart in float32 for --train_minutes, then bfloat16 for as many steps
  (compared at the same step: at the same time, the faster dtype would have trained more)."""
  mesh = make_mesh()
  images, labels = digits_dataset.split_arrays('train')
  real = slice(check.sizes['eval_reference'])  # classes in turn: all 10 in any part
  test_images, test_labels = digits_dataset.split_arrays('test')
  extractor = evaluation.make_extractor(learning_config(check, 'float32'), mesh)
  features, _ = extractor(images[real])
  reference = evaluation.statistics(features, labels[real])
  floor = evaluation.score(test_images, test_labels, extractor, reference)
  record('floor', {k: round(floor[k], 4) for k in ('class_accuracy', 'frechet_distance',
                                                   'precision', 'recall')})
  seconds, steps = check.args.train_minutes * 60, check.sizes.get('learning_steps')
  for dtype in ('float32', 'bfloat16'):
    if check.left() < 75:
      raise Skip(f'{check.left():.0f} s of the budget left before {dtype}')
    config = learning_config(check, dtype)
    # bfloat16 takes float32's steps in whatever time that needs (on a CPU, 2-3x more),
    # leaving a minute of the budget for the scoring.
    limit = seconds if steps is None else float('inf')
    result = train_and_score(config, mesh, images, labels, extractor, reference,
                             seconds=min(limit, check.left() - 60), steps=steps)
    steps = steps or result['steps']
    record(dtype, result)
  f32, bf16 = check.results['parts']['learning']['float32'], check.results['parts']['learning'][
      'bfloat16']
  record('same_steps', f32['steps'] == bf16['steps'])
  # One seed per dtype: a difference is a verdict only beyond float32's own seed-to-seed
  # spread (SEED_SPREAD, measured on the CPU).
  difference = bf16['ema']['class_accuracy'] - f32['ema']['class_accuracy']
  width = SEED_SPREAD[1] - SEED_SPREAD[0]
  record('ema_class_accuracy_bf16_minus_f32', round(difference, 4))
  record('f32_seed_spread', {'ema_class_accuracy': SEED_SPREAD, 'measured': SEED_SPREAD_SOURCE})
  record('verdict', 'within the seeds\' spread: one seed per dtype shows no difference'
         if abs(difference) <= width else
         f'bf16 {"below" if difference < 0 else "above"} float32 by more than the seeds\' spread')
  record('bf16_learns_like_f32', difference >= -width)


def train_and_score(config, mesh, images, labels, extractor, reference, seconds, steps):
  """Trains on the in-memory digits for `seconds` or `steps` (whichever comes first;
  steps None: no step limit), then scores the raw and the EMA G."""
  update, state, _, step, _ = compiled_step(config, mesh)
  rng, sharding = np.random.default_rng(config.seed), NamedSharding(mesh, P(None, 'data'))
  shape = (config.num_d_steps, config.batch_size)
  done, start = 0, time.perf_counter()
  while (steps is None or done < steps) and time.perf_counter() - start < seconds:
    index = rng.integers(0, len(images), shape)
    state, metrics = step(state, jax.device_put({'image': images[index],
                                                 'label': labels[index]}, sharding))
    done += 1
    if done % 50 == 0:
      jax.block_until_ready(metrics)
  jax.block_until_ready(state)
  train_s = time.perf_counter() - start
  standing = sampling.StandingStatistics(config, update.generator, mesh, config.ema_bn_batches,
                                         config.batch_size)
  ema = standing(generator_variables(state, ema=True),
                 sampling.ema_statistics_key(config.seed, done))
  sampler, keep = sampling.ImageSampler(update.generator, mesh), ('class_accuracy',
      'frechet_distance', 'precision', 'recall', 'density', 'coverage', 'seconds')
  out = {'steps': done, 'train_s': round(train_s, 1), 'steps_per_s': round(done / train_s, 2),
         'd_loss': round(float(metrics['d_loss']), 4), 'g_loss': round(float(metrics['g_loss']), 4)}
  for name, variables in (('ema', ema), ('raw', generator_variables(state, ema=False))):
    result = evaluation.evaluate(sampler, variables, config, extractor, reference,
                                 config.eval_num_samples, seed=config.seed)
    out[name] = {k: round(float(result[k]), 4) for k in keep}
  log.info('learning %s: %s', config.dtype, out)
  return out


def max_batch_part(check, record):
  """Per dtype: a global batch (over all devices) from XLA's estimates at two batches
  (where the device gives its limit), then probes (compile, two steps) up or down to the
  largest that runs."""
  mesh, s = make_mesh(), check.sizes
  limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
  cap = s['big'] if check.args.tiny else 16_384  # --tiny: the step part's batch, compiled
  for dtype, impl in (('bfloat16', 'cudnn' if check.on_gpu else 'xla'), ('float32', 'xla')):
    if check.left() < 60:
      record(dtype, {'skipped': f'{check.left():.0f} s of the budget left'})
      continue
    probes = []

    def runs(batch_size):
      start = time.perf_counter()
      try:
        config = step_config(check, batch_size, dtype, impl)
        _, state, batch, step, _ = compiled_step(config, mesh)
        peak = step_memory_of.of(step).as_dict()['peak']
        if limit and peak > limit:
          raise MemoryError(f'XLA estimates {peak / GIB:.1f} GiB, the device has '
                            f'{limit / GIB:.1f}')
        for _ in range(2):
          state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        ok, why = True, ''
      except Exception as e:  # noqa: BLE001 (out of memory, at compile or run time)
        ok, why = False, f'{type(e).__name__}: {e}'[:300]
      probes.append({'batch': batch_size, 'runs': ok, 's': round(time.perf_counter() - start, 1),
                     **({'why': why} if why else {})})
      record(dtype, {'probes': probes})
      log.info('max_batch %s: batch %d %s (%.0f s)', dtype, batch_size,
               'runs' if ok else f'does not run ({why[:200]})', probes[-1]['s'])
      return ok

    first = s['big']
    if limit:  # peak(B) = fixed + B * per_image, from the step part's two compiles
      estimate = lambda b: step_memory_of.of(compiled_step(step_config(check, b, dtype, impl),
                                                           mesh)[3]).peak
      small, big = estimate(s['small']), estimate(s['big'])
      per_image = (big - small) / (s['big'] - s['small'])
      first = int((limit - (big - per_image * s['big'])) / per_image) // GRAIN * GRAIN
      record(dtype, {'estimated_largest': first, 'probes': probes})
    # From an estimate, grow by 1/8 (a compile per probe): the limit is near.
    # Each probe only if what is left covers the last probe's time (the first: a compile).
    probe_s = lambda: probes[-1]['s'] if probes else (1 if check.args.tiny else COMPILE_S + 5)
    low, high = largest_batch(runs, first, cap, lambda: check.left() > 1.5 * probe_s(),
                              growth=1.125 if limit else 2.0)
    record(dtype, {'largest_global_batch_that_runs': low, 'devices': mesh.size,
                   'largest_batch_per_device': low // mesh.size,
                   'smallest_global_batch_that_does_not': high, 'search_cap': cap,
                   'exact_to': GRAIN if high is not None else None, 'probes': probes})


GRAIN = 8  # the batch sizes the search tries are multiples of this


def largest_batch(runs, first: int, cap: int, time_left,
                  growth: float = 2.0) -> tuple[int, int | None]:
  """(largest batch known to run, smallest known not to, or None) by probing runs(b):
  `first` (clipped to [GRAIN, cap]), then growing by `growth` (at least GRAIN) up to
  `cap` until one fails, then bisecting to GRAIN; it stops early when time_left() is
  false."""
  low, high = 0, None
  batch = min(max(first // GRAIN * GRAIN, GRAIN), cap)
  while time_left():
    if runs(batch):
      low = batch
    else:
      high = batch
    if high is None and low < cap:
      batch = min(max(int(low * growth) // GRAIN * GRAIN, low + GRAIN), cap)
    elif high is not None and high - low > GRAIN:
      batch = (low + high) // 2 // GRAIN * GRAIN
    else:
      break
  return low, high


def devices_part(check, record):
  if jax.device_count() < 2:
    raise Skip(f'{jax.device_count()} device: 1 vs N devices needs at least 2')
  config = learning_config(check, 'float32')
  losses = {}
  # One step (its G step already runs through D's new weights): from the second on, Adam
  # (beta1 = 0) grows round-off, and with 'every_call' 1 and 2 devices then differ by
  # ~1e-3 as two starts 1e-7 apart on one device do (BENCHMARKS_LOG.md).
  for mesh in (make_mesh(jax.devices()[:1]), make_mesh()):
    _, state, batch, step, _ = compiled_step(config, mesh)  # the same batch on both
    state, metrics = step(state, batch)
    losses[mesh.size] = {k: float(metrics[k]) for k in ('d_loss', 'g_loss', 'd_grad_norm',
                                                        'g_grad_norm')}
  one, many = losses[1], losses[jax.device_count()]
  error = max(abs(one[k] - many[k]) / max(abs(one[k]), 1e-6) for k in one)
  record('losses', {str(k): v for k, v in losses.items()})
  record('max_relative_difference', error)
  record('agree', error < 1e-3)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='directory for check.json and check.log')
  parser.add_argument('--budget_minutes', type=float, default=9.0)
  parser.add_argument('--train_minutes', type=float, default=1.0,
                      help='float32 training time of the learning part (--tiny: 400 steps)')
  parser.add_argument('--tiny', action='store_true', help='tiny configs: seconds per part')
  parser.add_argument('--parts', default='device,attention,step,fid,learning,max_batch,devices')
  parser.add_argument('--dry_run', action='store_true',
                      help='print the plan: each part\'s estimate against the budget; run nothing')
  args = parser.parse_args()
  if args.dry_run:
    print('\n'.join(plan(args.parts.split(','), args.budget_minutes * 60)))
    return
  os.makedirs(args.out, exist_ok=True)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', handlers=[
      logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(args.out, 'check.log'))])
  check = Check(args)
  functions = {'device': device_part, 'attention': attention_part, 'step': step_part,
               'fid': fid_part, 'learning': learning_part, 'max_batch': max_batch_part,
               'devices': devices_part}
  parts = {k: (f, ESTIMATES[k][0]) for k, f in functions.items()}
  if args.tiny:
    parts = {k: (f, 0) for k, (f, _) in parts.items()}
    # The steps of the step, learning, max_batch and devices parts (the tiny step part
    # uses the learning part's config), and the initial state, from the start.
    config = learning_config(check, 'float32')
    initial_ahead(Update(config, *make_models(config), make_mesh()))
    for dtype, mesh in (('float32', make_mesh()), ('bfloat16', make_mesh()),
                        ('float32', make_mesh(jax.devices()[:1]))):
      compile_ahead(learning_config(check, dtype), mesh)
  for name in args.parts.split(','):
    part, min_seconds = parts[name]
    check.run(name, lambda record: part(check, record), min_seconds)
  log.info('wrote %s', os.path.join(args.out, 'check.json'))


if __name__ == '__main__':
  main()
