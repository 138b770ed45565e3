"""Where the time of a compiled step goes: a jax.profiler trace joined with the
step's optimised HLO (`compiled.as_text()`).

On the CPU the trace has one event per executed HLO instruction (thunk) when
XLA_FLAGS has --xla_cpu_enable_xprof_traceme=true; benchmarks/train_step.py
sets it. Each instruction is put in one category from what it computes (a
convolution, a dot, a copy) and the `op_name` metadata JAX gives it (network,
layer, forward or backward pass).
"""
import collections
import glob
import gzip
import json
import re

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')


def _parse(hlo_text: str):
  """{instruction: (shape, op_name, line)} and {computation: body text}."""
  instructions, bodies, current = {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    if (m := _COMPUTATION.match(line)) and '=' not in line.split('{')[0]:
      current = m.group(1)
      continue
    if current is not None:
      bodies[current].append(line)
    if m := _INSTRUCTION.match(line):
      op = _OP_NAME.search(line)
      instructions[m.group(1)] = (m.group(2), op.group(1) if op else '', line)
  return instructions, {k: '\n'.join(v) for k, v in bodies.items()}


def _kernel_shaped(shape: str) -> bool:
  """A conv kernel (or its gradient) [3, 3, I, O] or [1, 1, I, O] in some layout:
  two adjacent dims of 1 or 3 (activations here are at least 4x4)."""
  dims = [int(d) for d in re.findall(r'\d+', shape.split('{')[0].split('[', 1)[-1])]
  return any(a == b and a in (1, 3) for a, b in zip(dims, dims[1:]))


def category(name: str, instructions: dict, bodies: dict) -> str:
  shape, op_name, line = instructions.get(name, ('', '', ''))
  calls = _CALLS.search(line)
  body = bodies.get(calls.group(1), '') if calls else ''
  backward = 'transpose(jvp(' in op_name
  net = ('G' if 'Generator' in op_name else 'D' if 'Discriminator' in op_name else '')
  where = f'{net} {"backward" if backward else "forward"}' if net else ''
  if ' convolution(' in body or ' convolution(' in line:
    if (backward or not op_name) and _kernel_shaped(shape):  # partitioned: no metadata
      return 'convolution, weight gradients'
    return f'convolution, {where or "other"}'
  if ' dot(' in body or ' dot(' in line:
    if re.search(r'/bhw[ci],c?o->bhwo|/bhwo,io->bhwi/', op_name):  # valid_conv's im2col
      return f'convolution, {where}'  # forward, per-tap input gradient
    if re.search(r'/bhw[ci],bhwo->[ci]o/|/bhwo,bhwi->oi/', op_name):
      return 'convolution, weight gradients'  # valid_conv's, per tap or im2col
    if '/attention/' in op_name and not re.search(r'/(theta|phi|g|o)/', op_name):
      return f'attention matmuls, {where}'
    if re.search(r'/(theta|phi|g|o|linear|embed)/', op_name) and (
        'dot_general' in op_name or backward):
      return f'dense and 1x1 layers, {where}'
    return 'spectral norm: power iteration and sigma' if net else 'other matmuls'
  if name.startswith(('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute')):
    return 'collectives between devices'
  if name.startswith(('transpose', 'copy')) or re.match(r'^[\w]*(transpose|copy)_fusion', name):
    return 'layout copies and transposes'
  if '/cbn' in op_name or 'BatchNorm' in op_name or '/bn' in op_name:
    return f'batch norm, {where}'
  if 'adam' in op_name.lower() or 'optax' in op_name.lower() or 'scale_by' in op_name:
    return 'optimisers (Adam)'
  if net:
    return f'elementwise and reductions, {where}'
  return 'elementwise and other (losses, EMA, Adam, RNG, guards)'


def breakdown(trace_dir: str, hlo_text: str, steps: int) -> dict:
  """{category: ms per step}, largest first, over the events of the newest
  trace in `trace_dir` (which must cover `steps` steps)."""
  path = sorted(glob.glob(f'{trace_dir}/plugins/profile/*/*.trace.json.gz'))[-1]
  with open(f'{trace_dir}/step_hlo.txt', 'w') as f:  # what the categories were read from
    f.write(hlo_text)
  events = json.load(gzip.open(path))['traceEvents']
  instructions, bodies = _parse(hlo_text)
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e['name'] in instructions:
      totals[category(e['name'], instructions, bodies)] += e['dur'] / 1e3 / steps
  return {k: round(v, 1) for k, v in totals.most_common()}
