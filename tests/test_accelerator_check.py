"""benchmarks/accelerator_check.py: --tiny on the CPU, every part, with TensorFlow, TFDS,
clu and grain unimportable (a lent GPU machine has none of them)."""
import json
import os
import subprocess
import sys

import pytest

from processes import TEST_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from accelerator_check import GRAIN, largest_batch  # noqa: E402

BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu', 'grain')


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


@pytest.mark.slow
def test_tiny_check_runs_every_part_without_tensorflow(tmp_path):
  blocked = tmp_path / 'blocked'
  for name in BLOCKED:  # packages that shadow the real ones and fail on import
    (blocked / name).mkdir(parents=True)
    (blocked / name / '__init__.py').write_text(f'raise ImportError("{name} is blocked")\n')
  out = tmp_path / 'out'
  env = dict(os.environ, PYTHONPATH=str(blocked), XLA_FLAGS=' '.join((
      '--xla_force_host_platform_device_count=2', *TEST_XLA_FLAGS)))
  # Without the suite's compilation cache: no other test compiles the check's programs, and
  # writing its ~130 entries cost the check 5 s of CPU and 6 s of its time (measured).
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'accelerator_check.py'),
                           '--tiny', f'--out={out}'], env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  check = json.loads((out / 'check.json').read_text())
  assert (out / 'check.log').read_text().count('part ') >= 14  # a start and an end per part
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
    assert step['ms_per_step'] > 0 and step['images_per_s'] > 0 and step['compile_s'] > 0
    assert 0 < step['mfu'] < 1 and step['memory_estimate_gib']['peak'] > 0 and step['finite']
  assert 'cuDNN' in parts['step']['batch16_bfloat16_cudnn']['skipped']
  assert parts['fid']['num_samples'] == 4 and parts['fid']['images_per_s_end_to_end'] > 0
  learning = parts['learning']
  assert learning['float32']['steps'] > 0 and learning['same_steps']
  for dtype in ('float32', 'bfloat16'):
    for g in ('ema', 'raw'):
      assert 0 <= learning[dtype][g]['class_accuracy'] <= 1
      assert learning[dtype][g]['frechet_distance'] > 0
  assert learning['floor']['class_accuracy'] >= 0.98  # the shipped classifier on real digits
  assert isinstance(learning['bf16_learns_like_f32'], bool)
  for dtype in ('float32', 'bfloat16'):  # --tiny caps the search at the step part's batch
    assert parts['max_batch'][dtype]['largest_batch_that_runs'] == 16
  assert parts['devices']['agree'] and set(parts['devices']['losses']) == {'1', '2'}
