"""Times the compiled SAGAN train step of a config on this machine's devices.

  python benchmarks/train_step.py --config=configs/quickstart.py --out=/tmp/bench.json
  python benchmarks/train_step.py --config=configs/imagenet128.py --config.dtype=bfloat16
  python benchmarks/train_step.py --config=configs/quickstart.py --profile_dir=/tmp/trace
  JAX_NUM_CPU_DEVICES=1 python benchmarks/train_step.py --config=configs/imagenet128.py \
      --compile_only --config.grad_accumulation=4 --config.remat=True \
      --config.attention_impl=xla --config.resampling=separate   # one GPU's program, memory

Reports the median step time after warm-up (device-synchronised), images/s (real
images through D per second), FLOPs per step from XLA's cost analysis (per
device), the achieved FLOP/s, model-FLOPs utilisation against a matmul peak
measured in the same run on the same device, and peak device memory where the
backend reports it, and XLA's memory estimate per device of the compiled step
(`memory_analysis`: state and batch, activations and gradients, peak; what
main.py checks against the device before training). The data are synthetic: this
measures the step, not the input pipeline.
"""
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if any(a.startswith('--profile_dir') for a in sys.argv):  # before jax: on the CPU, one trace
  os.environ['XLA_FLAGS'] = (  # event per executed HLO instruction, for the breakdown
      os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_enable_xprof_traceme=true')

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sagan_jax import train
from sagan_jax.config import validate
from sagan_jax.mesh import use_cpu_cores
from sagan_jax.models import make_models
from sagan_jax import memory
from sagan_jax.update import Update
from timing import matmul_peak, synthetic_batch, time_steps

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_integer('steps', 20, 'Timed steps (the median is reported).')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
flags.DEFINE_string('out', None, 'Write the results to this JSON file too.')
flags.DEFINE_string('profile_dir', None, 'Also write a jax.profiler trace of 3 steps here, '
                    'and report where their time went (benchmarks/step_profile.py).')
flags.DEFINE_bool('compile_only', False, 'Only compile and report FLOPs per step (no timing).')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = FLAGS.config
  use_cpu_cores(config.batch_size)  # as main.py does: one CPU device per core
  validate(config, jax.device_count(), jax.process_count())
  mesh = train.make_mesh()
  generator, discriminator = make_models(config)
  update = Update(config, generator, discriminator, mesh)
  state = update.initial_state(0)
  batch = synthetic_batch(config, mesh)

  start = time.perf_counter()
  step = update.jitted().lower(
      state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = step.cost_analysis()
  flops = float((cost[0] if isinstance(cost, list) else cost)['flops'])  # per device
  estimate = {k: round(v / 2**20, 1) for k, v in memory.of(step).as_dict().items()
              if k != 'rejected'}
  settings = {k: config[k] for k in ('image_size', 'ch', 'batch_size', 'num_d_steps',
                                     'attention_resolution', 'dtype', 'grad_accumulation',
                                     'remat', 'attention_impl', 'resampling')}
  if FLAGS.compile_only:
    print(json.dumps({'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
                      'config': settings, 'memory_estimate_mib_per_device': estimate,
                      'compile_s': round(compile_s, 1),
                      'gflop_per_step_per_device': round(flops / 1e9, 2),
                      'gflop_per_image': round(flops * jax.device_count() / 1e9 / (
                          config.batch_size * config.num_d_steps), 2)}, indent=1))
    return

  state, metrics, times = time_steps(step, state, batch, FLAGS.steps, FLAGS.warmup)
  step_s = float(np.median(times))
  if FLAGS.profile_dir:
    with jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True):
      for _ in range(3):
        state, metrics = step(state, batch)
      jax.block_until_ready((state, metrics))
    from step_profile import breakdown
    profile = breakdown(FLAGS.profile_dir, step.as_text(), steps=3)

  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  n = 2048 if on_cpu else 8192
  peaks = {dtype: matmul_peak(jnp.dtype(dtype), n) for dtype in ('float32', 'bfloat16')}
  peak = peaks[config.dtype]  # MFU is against the peak of the dtype the step computes in
  peak_bytes = (device.memory_stats() or {}).get('peak_bytes_in_use')
  result = {
      'date': datetime.date.today().isoformat(),
      'device': f'{jax.device_count()} x {device.device_kind}',
      'host': f'{platform.node()} ({os.cpu_count()} CPUs)',
      'config': settings,
      'compile_s': round(compile_s, 1),
      'ms_per_step': round(step_s * 1e3, 2),
      'ms_per_step_min_max': [round(min(times) * 1e3, 2), round(max(times) * 1e3, 2)],
      'images_per_s': round(config.batch_size * config.num_d_steps / step_s, 1),
      'gflop_per_step_per_device': round(flops / 1e9, 2),
      'achieved_tflop_s_per_device': round(flops / step_s / 1e12, 4),
      'matmul_peak_tflop_s': {k: round(v / 1e12, 4) for k, v in peaks.items()},
      'mfu': round(flops / step_s / peak, 4),
      'peak_memory_gib': None if peak_bytes is None else round(peak_bytes / 2**30, 2),
      'memory_estimate_mib_per_device': estimate,
  }
  if FLAGS.profile_dir:  # thread-time: instructions run concurrently on the CPU's threads
    result['profile_ms_per_step_by_category'] = profile
  print(json.dumps(result, indent=1))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
