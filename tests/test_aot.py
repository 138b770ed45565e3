"""--mode=compile: the tiny config compiled by the real TPU compiler (libtpu, from
requirements-tpu.txt) for TPU slices that are not here, and what fits a chip."""
import logging
import re
import subprocess
import sys

import numpy as np
import pytest

from sagan_jax import aot, chips, memory
from sagan_jax.config import ConfigError
from sagan_jax.mesh import make_mesh
from sagan_jax.update import make_update, step_measure
from tiny_config import ROOT, tiny_config

# One D step: the same programs as the tiny config's, in 10 s of the TPU compiler, not 15.
CONFIG = dict(num_d_steps=1)


def test_slice_names_are_the_ones_cloud_tpu_sells():
  assert chips.parse('v5e-256').shape == (16, 16) and chips.parse('v5e-256').chips == 256
  assert chips.parse('v5litepod-16').chip.name == 'v5e'
  assert chips.parse('v4-8').shape == (2, 2, 1) and chips.parse('v4-8').chips == 4  # cores
  assert chips.parse('v5p-128').shape == (4, 4, 4)
  assert chips.parse('v6e-8', num_slices=2).chips == 16
  with pytest.raises(chips.SliceError, match=r"'v7x-8' is not a Cloud TPU slice name; give one"):
    chips.parse('v7x-8')
  with pytest.raises(chips.SliceError, match=r'v4 slices come as v4-8, v4-16'):
    chips.parse('v4-6')


def test_a_missing_compiler_is_one_line_before_anything_is_built(monkeypatch):
  monkeypatch.setattr(chips.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(chips.SliceError, match='pip install -r requirements-tpu.txt'):
    chips.devices(chips.parse('v5e-4'))


def _assert_step_report(report, chip):
  step = report['programs']['train_step']
  assert step['fits'] and 0 < step['memory']['peak'] < chip.hbm
  assert step['memory']['temporaries'] > 0 and step['memory']['arguments'] > 0
  assert step['flops'] > 0 and step['bytes_accessed'] > 0
  # The gradients and G's batch-norm statistics are reduced over the chips: all-reduces
  # (one per leaf or fused), moving at least the parameters' gradients.
  reduce = step['collectives']['all-reduce']
  assert reduce['count'] >= 2 and reduce['bytes'] > 0
  e = step['estimate']
  assert e['seconds'] == max(e['compute_s'], e['memory_s'])
  assert e['compute_s'] == pytest.approx(step['flops'] / chip.bf16_flops)
  return step


def test_the_tiny_config_compiles_for_a_v5e_slice_with_the_evaluation(tmp_path, caplog):
  tpu_slice = chips.parse('v5e-4')
  with caplog.at_level(logging.INFO):
    report = aot.compile_for_slice(tiny_config(**CONFIG), tpu_slice, out=str(tmp_path))
  # Each program is logged as its compile ends, before the table.
  logged = [r.getMessage() for r in caplog.records]
  ends = [i for i, line in enumerate(logged)
          if re.match(r'  \w+: .* HBM, fits \(\d+ s of compiling\)', line)]
  assert [logged[i].split(':')[0].strip() for i in ends] == ['train_step', 'sampler', 'classifier']
  assert ends[-1] < logged.index(aot.table(report).splitlines()[0])
  assert report['device_kind'] == 'TPU v5 lite' and report['chips'] == 4
  _assert_step_report(report, tpu_slice.chip)
  # The sampler gathers the images to every host; the classifier its features and logits.
  assert set(report['programs']) == {'train_step', 'sampler', 'classifier'}
  for name in ('sampler', 'classifier'):
    assert report['programs'][name]['fits'] and report['programs'][name]['flops'] > 0
    assert 'all-gather' in report['programs'][name]['collectives']
  assert (tmp_path / 'compile_sagan_shapes_v5e-4_b8_float32.json').exists()
  assert 'v5e-4: 4 x TPU v5 lite chips' in aot.table(report)


def test_a_v4_megacore_slice_and_two_slices_over_dcn():
  v4 = aot.compile_for_slice(tiny_config(**CONFIG), chips.parse('v4-8'),  # 4 chips, 2x2x1
                             with_evaluation=False)
  assert v4['device_kind'] == 'TPU v4' and v4['chips'] == 4
  _assert_step_report(v4, chips.CHIPS['v4'])
  two = chips.parse('v5e-4', num_slices=2)
  devices = chips.devices(two)
  assert sorted({d.slice_index for d in devices}) == [0, 1]
  # Training's own mesh over them: each slice's chips together (jax.make_mesh refuses
  # several slices).
  assert [d.slice_index for d in make_mesh(devices).devices.flat] == [0] * 4 + [1] * 4
  report = aot.compile_for_slice(tiny_config(**CONFIG), two, with_evaluation=False)
  assert report['chips'] == 8 and report['processes'] == 2
  _assert_step_report(report, two.chip)


def test_a_batch_the_chips_do_not_divide_is_refused_before_compiling():
  with pytest.raises(ConfigError, match=r'config.batch_size=6 .* multiple of the device count \(4\)'):
    aot.compile_for_slice(tiny_config(batch_size=6), chips.parse('v5e-4'))


def test_main_says_what_is_wrong_in_one_line():
  for args, message in (
      (['--topology=v9-8'], "Compile error: --topology='v9-8' is not a Cloud TPU slice name"),
      (['--topology=v5e-4', '--config.batch_size=6'], 'Config error: config.batch_size=6'),
      ([], 'Command-line error: --mode=compile needs --topology')):
    result = subprocess.run(
        [sys.executable, 'main.py', '--mode=compile', '--config=tests/tiny_config.py', *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert 'Traceback' not in result.stderr


def test_the_compilers_out_of_memory_error_gives_what_the_step_needs():
  error = RuntimeError('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required '
                       'for HLO temporaries (104.00G) exceeds available HBM (15.75G).')
  needed = memory.from_error(error, arguments=2**30)
  assert needed.rejected and needed.temporaries == 104 * 2**30 and needed.peak == 105 * 2**30
  assert not needed.fits(None)
  used = memory.from_error(RuntimeError('RESOURCE_EXHAUSTED: Ran out of memory in memory space '
                                        'hbm. Used 20.50G of 15.75G hbm.'), arguments=2**30)
  assert used.peak == int(20.5 * 2**30)
  assert memory.from_error(RuntimeError('INVALID_ARGUMENT: no'), 0) is None


def test_what_the_memory_check_advises_fits_when_compiled_for_a_tpu():
  """A step that does not fit a (pretend) chip at its batch: each setting the advice names
  was compiled by the TPU compiler and found under the limit (remat and bf16 are already
  on, so a grad_accumulation is what is left)."""
  config = tiny_config(**CONFIG, remat=True, dtype='bfloat16', batch_size=8)  # 2 per chip
  mesh = make_mesh(chips.devices(chips.parse('v5e-4')))
  step = memory.compile_step(make_update(config, mesh, 'tpu'))[1]
  limit = step.peak - 1
  with pytest.raises(memory.MemoryFitError) as error:
    memory.check(step, config, 4, limit, step_measure(mesh, 'tpu'))
  flags = dict(error.value.advice)
  assert any(f.startswith('--config.grad_accumulation=') for f in flags), flags
  assert set(flags) == {'--config.grad_accumulation=2'}, flags  # a micro-batch of 1 per chip
  for flag, fitted in error.value.advice:
    assert fitted.fits(limit) and not fitted.rejected and flag in str(error.value)


def test_the_largest_batch_is_read_off_two_compiles_and_confirmed(caplog):
  """largest_batch with a stand-in compiler whose memory is known: 1 GiB of state and
  3 GiB per image, where the real compiler refuses more than 15 GiB. Each compile is
  logged as it ends (a search for a large slice is minutes per compile on a CPU)."""
  compiled = []

  def measure(config):
    per_device = config.batch_size // 4
    compiled.append(per_device)
    peak = 2**30 * (1 + 3 * per_device)
    return memory.Memory(arguments=2**30, temporaries=peak - 2**30,
                         rejected=peak > 15 * 2**30)

  with caplog.at_level(logging.INFO):
    found = memory.largest_batch(tiny_config(batch_size=8), 4, 16 * 2**30, measure)
  # The line says 5 per chip (16 GiB); the compiler refuses it (16 > 15): then 4 (13 GiB).
  assert found['per_device'] == 4 and found['global'] == 16 and compiled == [1, 8, 5, 4]
  logged = [r.getMessage() for r in caplog.records if 'per device, ' in r.getMessage()]
  assert [line.split(':')[0].strip() for line in logged] == [
      f'batch {4 * b} ({b} per device)' for b in compiled]
  assert 'batch 20 (5 per device): 16.00 GiB per device, refused by the compiler' in logged[2]
  assert '13.00 GiB per device, fits' in logged[3] and 'does not fit' not in logged[3]
  assert found['per_example'] == 3 * 2**30 and '5 per device did not fit' in found['limited_by']
  known = {2: measure(tiny_config(batch_size=8))}
  compiled.clear()
  assert memory.largest_batch(tiny_config(batch_size=8), 4, 16 * 2**30, measure,
                              known=known)['per_device'] == 4
  assert compiled == [1, 5, 4]  # the known point saves a compile


def test_the_largest_batch_search_recovers_from_a_line_that_bends():
  """Activations that grow slowly at a micro-batch of a few images and three times faster
  beyond (as XLA's schedules for ImageNet-128 on v5e do): the first line overshoots, the
  line through the overshoot and the largest that fits lands on the limit."""
  compiled = []

  def measure(config):
    b = config.batch_size // 4
    compiled.append(b)
    gib = 2 + 0.1 * b if b <= 4 else 2.4 + 0.3 * (b - 4)
    return memory.Memory(arguments=2**30, temporaries=int(gib * 2**30) - 2**30)

  found = memory.largest_batch(tiny_config(batch_size=16), 4, 16 * 2**30, measure,
                               known={4: measure(tiny_config(batch_size=16))})
  assert found['per_device'] == 49 and compiled == [4, 1, 140, 49]  # 2.4 + 0.3 x 45 <= 16
  assert '140 per device did not fit' in found['limited_by']


def test_the_largest_batch_search_goes_on_up_when_the_first_line_stops_short():
  """Activations that grow more slowly beyond a micro-batch of eight: the line through 1
  and 8 stops short of the limit, and the search goes on along the line through the two
  largest batches that fit until a compile lands on the limit."""
  compiled = []

  def measure(config):
    b = config.batch_size // 4
    compiled.append(b)
    mib = 2048 + 256 * b if b <= 8 else 4096 + 128 * (b - 8)
    return memory.Memory(arguments=2**30, temporaries=(mib - 1024) * 2**20)

  found = memory.largest_batch(tiny_config(batch_size=8), 4, 16 * 2**30, measure)
  # 1 and 8 say 56 per device (10 GiB); 8 and 56 say 104 (16 GiB), which the line through
  # 56 and 104 confirms.
  assert compiled == [1, 8, 56, 104] and found['per_device'] == 104 and found['global'] == 416
  # Where the line through the two largest that fit is flat (XLA's schedule near the
  # limit), at least half the first line's growth from the largest that fits: here the
  # peak stays at 12 GiB from 40 to 100 per device, then grows again.
  compiled.clear()

  def flat_then_up(config):
    b = config.batch_size // 4
    compiled.append(b)
    mib = 2048 + 256 * min(b, 40) + 256 * max(b - 100, 0)
    return memory.Memory(arguments=2**30, temporaries=(mib - 1024) * 2**20)

  found = memory.largest_batch(tiny_config(batch_size=8), 4, 16 * 2**30, flat_then_up)
  # 56 fits; 8 and 56 say 80, which fits at the same 12 GiB; from there at half the first
  # line's 256 MiB per image: 112 (15 GiB); then 120 (17 GiB) does not fit.
  assert compiled == [1, 8, 56, 80, 112, 120] and found['per_device'] == 112, compiled
  # A flat first line (two compiles at one peak) goes twice as far per compile, no further.
  compiled.clear()
  flat = lambda config: compiled.append(config.batch_size // 4) or memory.Memory(
      arguments=2**30, temporaries=2**30 * (1 if config.batch_size // 4 <= 16 else 20))
  found = memory.largest_batch(tiny_config(batch_size=8), 4, 16 * 2**30, flat)
  assert compiled[:4] == [1, 8, 16, 32] and found['per_device'] == 16, compiled


def test_the_largest_batch_search_does_not_follow_a_flattened_curve_far_past_the_limit():
  """The curve the TPU compiler gave for ImageNet-128 in bf16 on v6e-8 (the peak per chip at
  1, 32, 366, 402, 447 and 1,369 images per chip, measured; straight between): nearly flat
  from 366 to 402, steep again beyond 447. The line through 366 and 402 alone points at
  1,369 (a program of 90 GB on a 34 GB chip, a whole compile spent); at no less than half
  the first line's growth the search lands at 465, 14 below where the curve crosses."""
  measured = {1: 2383715648, 32: 5095966496, 366: 31465646880, 402: 31569478592,
              447: 32303144800, 1369: 90709539982}
  compiled = []

  def measure(config):
    b = config.batch_size // 8
    compiled.append(b)
    peak = int(np.interp(b, sorted(measured), [measured[x] for x in sorted(measured)]))
    return memory.Memory(arguments=2**30, temporaries=peak - 2**30)

  found = memory.largest_batch(tiny_config(batch_size=256), 8, 32 * 2**30, measure,
                               known={32: measure(tiny_config(batch_size=256))})
  assert compiled == [32, 1, 366, 402, 465, 485] and found['per_device'] == 465, compiled
  assert max(found['compiled'].values()) < 1.1 * 32 * 2**30
