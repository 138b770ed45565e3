"""benchmarks/accelerator_check.py: --tiny on the CPU, every part, seeing only what the lent
GPU image has (benchmarks/gpu_image/packages.txt) and the wheels that docs/performance.md
carries there."""
import argparse
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from sagan_jax.mesh import make_mesh  # noqa: E402
from sagan_jax.update import make_update  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from accelerator_check import (GRAIN, Check, attention_flops, attention_inputs,  # noqa: E402
                              largest_batch, plan, published_peaks, step_config)

IMAGE = os.path.join(ROOT, 'benchmarks', 'gpu_image', 'packages.txt')
CARRIED = ('ml_collections', 'mlxtend')  # the wheels of docs/performance.md's download


def image_only_path(folder) -> str:
  """A folder of links to the import names of just the installed distributions that the
  GPU image lists, and of the carried wheels: with `python -S` and it as the path, any
  other package is not found at all, as there."""
  names = {line.strip() for line in open(IMAGE) if line.strip() and not line.startswith('#')}
  names |= set(CARRIED)
  normal = lambda n: re.sub(r'[-_.]+', '-', n).lower()
  wanted = {normal(n) for n in names}
  folder.mkdir()
  for dist in importlib.metadata.distributions():
    if normal(dist.metadata['Name']) not in wanted:
      continue
    for parts in {f.parts[:2] for f in dist.files or () if not f.parts[0].startswith('..')}:
      top = parts[0]
      source = dist.locate_file(top)
      if top == '__pycache__' or not os.path.exists(source):
        continue
      if os.path.isdir(source) and not os.path.exists(os.path.join(source, '__init__.py')):
        # A namespace package (google): only this distribution's part of it.
        (folder / top).mkdir(exist_ok=True)
        if len(parts) == 2 and not (folder / top / parts[1]).exists():
          (folder / top / parts[1]).symlink_to(dist.locate_file(os.path.join(*parts)))
      elif not (folder / top).exists():
        (folder / top).symlink_to(source)
  return str(folder)


def test_largest_batch_search_finds_the_limit_to_the_grain():
  for limit, first, growth in ((100, 256, 2.0), (300, 256, 1.125), (256, 256, 2.0), (5, 64, 2.0),
                               (10**6, 256, 2.0)):
    probes = []
    low, high = largest_batch(lambda b: probes.append(b) or b <= limit, first, cap=4096,
                              time_left=lambda: True, growth=growth)
    if limit >= 4096:
      assert (low, high) == (4096, None)  # the cap runs: no upper bound found
    else:
      assert low == limit // GRAIN * GRAIN and high == low + GRAIN, (limit, low, high)
    assert all(b % GRAIN == 0 for b in probes) and len(probes) == len(set(probes))
  # Out of time: it stops with what it knows.
  calls = []
  assert largest_batch(lambda b: calls.append(b) or True, 256, 4096,
                       time_left=lambda: len(calls) < 2) == (512, None)


def test_attention_flops_are_counted_from_the_networks_shapes(tiny):
  """Each SelfAttention of G and D is found with its shapes, and the forward count per
  call is XLA's cost analysis of its two einsums."""
  c = tiny.config
  found = attention_inputs(tiny.update)
  s = c.attention_resolution
  for net in ('G', 'D'):
    (n, m, d, v), = found[net]  # one attention block each
    assert (n, m) == (s * s, s * s // 4) and v == 4 * d > 0, found
    cost = lambda spec, *shapes: jax.jit(functools.partial(jnp.einsum, spec)).lower(*(
        jax.ShapeDtypeStruct((c.batch_size,) + x, jnp.float32) for x in shapes)).cost_analysis()
    xla = (cost('bnd,bmd->bnm', (n, d), (m, d))['flops'] +  # theta phi^T
           cost('bnm,bmv->bnv', (n, m), (m, v))['flops'])  # beta g
    assert c.batch_size * 2 * n * m * (d + v) == xla
  forward = sum(2 * n * m * (d + v) for n, m, d, v in found['G'] + found['D'])
  # Per step: D steps (G forward on B; D forward and backward on 2B), then the G step.
  assert attention_flops(tiny.update) == c.batch_size * forward // 2 * (
      c.num_d_steps * (1 + 6) + 6)


def test_published_peaks_and_the_dry_run_plan():
  assert published_peaks('NVIDIA H100 80GB HBM3', 'bfloat16') == {'H100_bfloat16_dense': 989.4e12}
  assert set(published_peaks('NVIDIA H200', 'float32')) == {'H200_tf32_dense', 'H200_float32_dense'}
  assert published_peaks('NVIDIA H100 PCIe', 'bfloat16') == {} == published_peaks('cpu', 'float32')
  lines = plan(['device', 'step', 'max_batch'], 120)
  assert 'device' in lines[1] and 'runs' in lines[1]
  assert 'skipped' in lines[3] and lines[-1].endswith('of 120')
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'accelerator_check.py'),
                           '--dry_run', '--out=unused', '--budget_minutes=8'], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and 'planned' in result.stdout, result.stderr[-2000:]
  assert not os.path.exists('unused')


@pytest.mark.slow
def test_tiny_check_runs_every_part_with_only_the_gpu_images_packages(tmp_path):
  out = tmp_path / 'out'
  # XLA's default optimisation, not the suite's quicker compiles (TEST_XLA_FLAGS): the
  # learning part's 800 steps run longer than the compiles take (148 s with those flags
  # against 120 s without, measured alone).
  env = dict(os.environ, PYTHONPATH=image_only_path(tmp_path / 'site'),
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  # Without the suite's compilation cache: no other test compiles the check's programs, and
  # writing its ~130 entries cost the check 5 s of CPU and 6 s of its time (measured).
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  result = subprocess.run([sys.executable, '-S', os.path.join(ROOT, 'benchmarks',
                                                         'accelerator_check.py'),
                           '--tiny', f'--out={out}'], env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  check = json.loads((out / 'check.json').read_text())
  log = (out / 'check.log').read_text()
  assert log.count('part ') >= 14  # a start and an end per part
  assert 'max_batch bfloat16: batch 16 runs' in log  # each probe as it ends
  parts = check['parts']
  assert {k: v['status'] for k, v in parts.items()} == {
      'device': 'ok', 'attention': 'ok', 'step': 'ok', 'fid': 'ok', 'learning': 'ok',
      'max_batch': 'ok', 'devices': 'ok'}, {k: v.get('error') for k, v in parts.items()}
  # On the CPU, the CPU's blocked attention stands in for cuDNN's: the same comparison.
  attention = parts['attention']
  assert attention['agree'] and attention['blocked']['ms_forward_and_backward'] > 0
  assert 0 < attention['xla']['max_error_vs_f32'] < 0.05
  assert parts['device']['matmul_peak_tflop_s']['float32'] > 0
  for dtype in ('float32', 'bfloat16'):
    step = parts['step'][f'batch16_{dtype}_xla']
    assert 0 < step['ms_per_step'] < 1e5 and step['compile_s'] > 0 and step['finite']
    assert step['images_per_s'] == pytest.approx(16e3 / step['ms_per_step'], rel=0.01)
    assert step['memory_estimate_gib']['peak'] > 0 and step['devices'] == 2
    # FLOPs: XLA's cost analysis of the same program, compiled here on 2 of the suite's
    # devices; the attention's count from the shapes is a part of it.
    config = step_config(Check(argparse.Namespace(tiny=True, budget_minutes=1)), 16, dtype,
                         'xla')
    update = make_update(config, make_mesh(jax.devices()[:2]))
    cost = update.compiled().cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)['flops']
    assert step['gflop_per_step_per_device'] == pytest.approx(flops / 1e9, rel=1e-3)
    assert step['gflop_cost_analysis'] == step['gflop_per_step_per_device']
    assert 0 < step['attention_gflop_from_shapes'] < step['gflop_cost_analysis']
    # MFU against the matmul peak measured here (a CPU has no published peak).
    assert set(step['mfu']) == {'matmul_peak_measured_here'}
    assert step['mfu']['matmul_peak_measured_here'] == pytest.approx(
        step['gflop_per_step_per_device'] / step['ms_per_step'] /
        step['peak_tflop_s']['matmul_peak_measured_here'], rel=0.02)
    assert 0 < step['mfu']['matmul_peak_measured_here'] < 1
  assert 'cuDNN' in parts['step']['batch16_bfloat16_cudnn']['skipped']
  assert parts['fid']['num_samples'] == 4 and parts['fid']['images_per_s_end_to_end'] > 0
  learning = parts['learning']
  assert learning['float32']['steps'] == 400 and learning['same_steps']
  for dtype in ('float32', 'bfloat16'):
    for g in ('ema', 'raw'):
      # Above chance (10%): a G at chance reaches 15% of 512 samples with probability ~1e-4
      # (20-29% here, measured).
      assert learning[dtype][g]['class_accuracy'] >= 0.15, (dtype, g, learning[dtype][g])
      assert learning[dtype][g]['frechet_distance'] > 0
  assert learning['floor']['class_accuracy'] >= 0.98  # the shipped classifier on real digits
  assert learning['ema_class_accuracy_bf16_minus_f32'] == pytest.approx(
      learning['bfloat16']['ema']['class_accuracy'] - learning['float32']['ema']['class_accuracy'],
      abs=1e-3)
  assert learning['verdict'] and isinstance(learning['bf16_learns_like_f32'], bool)
  for dtype in ('float32', 'bfloat16'):  # --tiny caps the search at the step part's batch
    found = parts['max_batch'][dtype]
    assert found['largest_global_batch_that_runs'] == 16 and found['largest_batch_per_device'] == 8
  assert parts['devices']['agree'] and set(parts['devices']['losses']) == {'1', '2'}
