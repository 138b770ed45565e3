"""--mode=compile: a training run's programs compiled ahead of time for a Cloud TPU slice
that is not here, by the TPU compiler on any machine.

It builds the slice's compile-only devices (chips.py), the mesh, the shardings and the
update exactly as a run on that slice builds them (make_update with the slice's platform,
so every choice of the device policy follows the target, not this host), compiles the
train step, the evaluation's sampler and its feature network (Inception or the
classifier), and reports per program: memory per chip against the chip's HBM, FLOPs and
bytes (XLA's cost analysis), the collectives in the compiled program, and an estimate of
the step time from the chip's published peak and HBM bandwidth (a roofline). With
`max_batch`, the largest global batch whose step fits each chip (memory.largest_batch).
"""
import json
import re
import time

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sagan_jax import chips, evaluation, memory, sampling
from sagan_jax.config import validate
from sagan_jax.mesh import make_mesh
from sagan_jax.train_state import generator_variables
from sagan_jax.update import make_update, step_measure

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
                's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}
_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')
# '%name = <shape or (shapes)> all-reduce(' or its async '-start(' form.
_COLLECTIVE = re.compile(r'=\s*(.*?)\s(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {'count', 'bytes'}} of the collectives in a compiled program's HLO, the bytes
  being their outputs' per device (an async pair is counted once, at its start)."""
  out = {}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if not match:
      continue
    nbytes = 0
    for dtype, dims in _SHAPE.findall(match[1]):
      size = 1
      for d in filter(None, dims.split(',')):
        size *= int(d)
      nbytes += size * _DTYPE_BYTES[dtype]
    entry = out.setdefault(match[2], {'count': 0, 'bytes': 0})
    entry['count'] += 1
    entry['bytes'] += nbytes
  return out


def cost(compiled) -> dict[str, float]:
  """FLOPs and bytes accessed per chip (XLA's cost analysis; a loop's body, such as a
  scan over accumulated micro-batches, counts once)."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return {'flops': float(analysis.get('flops', 0.0)),
          'bytes_accessed': float(analysis.get('bytes accessed', 0.0))}


def roofline(flops: float, nbytes: float, chip: chips.Chip) -> dict:
  """An estimate, not a measurement: the larger of FLOPs at the chip's published bf16 peak
  and bytes at its published HBM bandwidth. TPUs publish no float32 peak: XLA computes
  float32 matmuls at the default precision in one bf16 pass, so the bf16 peak bounds
  float32 steps too (their bytes are what differ)."""
  compute_s, memory_s = flops / chip.bf16_flops, nbytes / chip.hbm_bandwidth
  return {'seconds': max(compute_s, memory_s), 'compute_s': compute_s, 'memory_s': memory_s,
          'bound': 'compute' if compute_s >= memory_s else 'HBM bandwidth'}


def program_report(name: str, compiled, needed: memory.Memory, chip: chips.Chip, images: int,
                   num_chips: int, seconds: float) -> dict:
  """One program's figures per chip, logged in a line as its compile ends (the table
  follows at the end); `images`: what one call processes on the slice."""
  report = {'compile_s': round(seconds, 1), 'memory': needed.as_dict(), 'hbm': chip.hbm,
            'fits': needed.fits(chip.hbm), 'verdict': needed.verdict(chip.hbm)}
  logging.info('  %s: %s per chip of %s HBM, %s (%.0f s of compiling)', name,
               memory.gib(needed.peak), memory.gib(chip.hbm), report['verdict'], seconds)
  if compiled is None:  # refused by the compiler for want of memory
    return report
  c = cost(compiled)
  estimate = roofline(c['flops'], c['bytes_accessed'], chip)
  report.update(c, flops_per_image=c['flops'] * num_chips / images,
                collectives=collectives(compiled.as_text()), estimate=dict(
                    estimate, images_per_s=images / estimate['seconds']))
  return report


def _compiled_program(jitted, *args):
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def compile_for_slice(config, tpu_slice: chips.Slice, out: str = '', max_batch: bool = False,
                      with_evaluation: bool = True) -> dict:
  """Compiles `config`'s programs for `tpu_slice` (the train step, and `with_evaluation`
  the sampler and the feature network); logs a table per program and returns (and writes
  to OUT/compile_NAME.json) the figures."""
  devices = chips.devices(tpu_slice)
  num_chips, processes = len(devices), len({d.process_index for d in devices})
  validate(config, num_chips, processes, platform='tpu')
  chip, mesh = tpu_slice.chip, make_mesh(devices)
  update = make_update(config, mesh, 'tpu')
  logging.info('Compiling for %s: %d processes (hosts), batch %d (%d per chip); each program '
               'is logged as its compile ends.',
               tpu_slice.describe(), processes, config.batch_size, config.batch_size // num_chips)
  report = {'slice': tpu_slice.name, 'num_slices': tpu_slice.num_slices, 'chips': num_chips,
            'processes': processes, 'device_kind': devices[0].device_kind,
            'chip_source': chip.source, 'jax': jax.__version__,
            'config': {k: config[k] for k in ('image_size', 'ch', 'batch_size', 'num_d_steps',
                                              'attention_resolution', 'dtype', 'grad_accumulation',
                                              'remat', 'attention_impl', 'resampling')},
            'programs': {}}

  start = time.perf_counter()
  step, needed = memory.compile_step(update)
  report['programs']['train_step'] = program_report(
      'train_step', step, needed, chip, config.batch_size * config.num_d_steps, num_chips,
      time.perf_counter() - start)

  if with_evaluation:
    report['programs'].update(evaluation_programs(config, update, mesh, chip))
  if max_batch:
    logging.info('Searching the largest batch that fits: each try compiles the step again '
                 '(this one took %.0f s).', report['programs']['train_step']['compile_s'])
    start = time.perf_counter()
    report['max_batch'] = memory.largest_batch(
        config, num_chips, chip.hbm, step_measure(mesh, 'tpu'),
        known={config.batch_size // num_chips: needed})
    report['max_batch']['seconds'] = round(time.perf_counter() - start, 1)
  for line in table(report).splitlines():
    logging.info('%s', line)
  if out:
    name = f'compile_{config.dataset}_{tpu_slice.name}{_suffix(tpu_slice, config)}.json'
    path = epath.Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    logging.info('Wrote %s', path)
  return report


def evaluation_programs(config, update, mesh, chip) -> dict:
  """The reports of the evaluation's sampler (the EMA G) and feature network, compiled at
  the evaluation's batch."""
  batch, num_chips = -(-evaluation.BATCH // mesh.size) * mesh.size, mesh.size
  split = NamedSharding(mesh, P('data'))
  z = jax.ShapeDtypeStruct((batch, config.z_dim), jnp.float32, sharding=split)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=split)
  sampler = sampling.ImageSampler(update.generator, mesh)
  compiled, seconds = _compiled_program(
      sampler.program, generator_variables(update.state_shapes(), ema=True), z, y)
  programs = {'sampler': program_report('sampler', compiled, memory.of(compiled), chip, batch,
                                        num_chips, seconds)}
  kind = evaluation.feature_kind(config)
  params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())),
      evaluation.feature_param_shapes(kind, config.num_classes, config.image_size))
  images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.uint8,
                                sharding=split)
  compiled, seconds = _compiled_program(
      evaluation.feature_program(kind, mesh, config.num_classes), params, images)
  programs[kind] = program_report(kind, compiled, memory.of(compiled), chip, batch, num_chips,
                                  seconds)
  return programs


def _suffix(tpu_slice, config) -> str:
  parts = [f'x{tpu_slice.num_slices}' if tpu_slice.num_slices > 1 else '',
           f'b{config.batch_size}', config.dtype,
           f'k{config.grad_accumulation}' if config.grad_accumulation > 1 else '',
           'remat' if config.remat else '']
  return '_' + '_'.join(p for p in parts if p)


def table(report: dict) -> str:
  """The report as text: one block per program."""
  g = memory.gib
  lines = [f"{report['slice']}: {report['chips']} x {report['device_kind']} chips, "
           f"{report['processes']} hosts; config {report['config']}"]
  for name, p in report['programs'].items():
    m = p['memory']
    lines.append(f'{name} (compiled in {p["compile_s"]} s)')
    lines.append(f'  memory per chip: {g(m["peak"])} of {g(p["hbm"])} HBM: {p["verdict"]} '
                 f'(arguments {g(m["arguments"])}, outputs {g(m["outputs"])}, temporaries '
                 f'{g(m["temporaries"])}, code {g(m["code"])}, reused {g(m["aliased"])})')
    if 'flops' not in p:
      continue
    e = p['estimate']
    lines.append(f'  cost per chip: {p["flops"] / 1e9:,.1f} GFLOP, {p["bytes_accessed"] / 1e9:,.2f} '
                 f'GB accessed; {p["flops_per_image"] / 1e9:,.2f} GFLOP per image')
    lines.append('  collectives: ' + (', '.join(
        f'{kind} x{c["count"]} ({g(c["bytes"])})' for kind, c in p['collectives'].items())
        or 'none'))
    lines.append(f'  estimate (roofline of the published peak, not a measurement): '
                 f'{e["seconds"] * 1e3:,.1f} ms, {e["images_per_s"]:,.0f} images/s, '
                 f'{e["bound"]}-bound')
  if 'max_batch' in report:
    b = report['max_batch']
    lines.append(f"largest batch that fits: {b['global']} ({b['per_device']} per chip; "
                 f"{g(b['peak'] or 0)} of {g(b['limit'])}), limited by {b['limited_by']}")
  return '\n'.join(lines)
