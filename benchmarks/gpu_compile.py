"""A config's train step compiled for NVIDIA GPUs that are not here: jax's CUDA plugin
compiles for a GPU described by a target config (its figures below, from NVIDIA's
datasheets), through the same make_update as a run on that GPU builds (the device policy
for an NVIDIA GPU), with XLA's attention: cuDNN's cannot be compiled without a GPU
(lowering it, jax asks the local cuDNN for its version: "RuntimeError: cuDNN not found"
here; its source then asks the local GPU for its compute capability). An exploration
beside --mode=compile: it needs jax's CUDA plugin (no CUDA libraries: it compiles
without them), which the project does not install (on a machine without a GPU driver the
plugin logs at every jax import), so it runs in an environment of its own:

  python3 -m venv /tmp/cuda && /tmp/cuda/bin/pip install jax==0.10.2 jaxlib==0.10.2 \
      jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2
  JAX_PLATFORMS=cpu PYTHONPATH=/tmp/cuda/lib/python3.11/site-packages:.venv/lib/python3.11/site-packages \
      /tmp/cuda/bin/python benchmarks/gpu_compile.py --gpu=h100 --count=8 --dtype=bfloat16

It prints and writes (benchmarks/results/compile/gpu_*.json) the memory per GPU against
what JAX may use of it (75%: its default preallocation) and all of it, the collectives,
and whether cuDNN's attention is in the program (it is not: XLA's). No FLOPs: without a
device XLA's GPU compiler gives no cost analysis (the step's FLOPs are the TPU table's).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jax.experimental import topologies  # noqa: E402

from accelerator_check import PUBLISHED  # noqa: E402
from sagan_jax import aot, memory  # noqa: E402
from sagan_jax.config import from_file, validate  # noqa: E402
from sagan_jax.mesh import make_mesh  # noqa: E402
from sagan_jax.update import make_update  # noqa: E402

GIB = 2**30
PREALLOCATED = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default: what a run may use
# SXM parts, from NVIDIA's datasheets and CUDA's device properties: SMs, memory, L2, boost
# clock, compute capability 9.0 (Hopper); the HBM bandwidth is accelerator_check's.
GPUS = {
    'h100': dict(name='NVIDIA H100 80GB HBM3', sms=132, memory=80 * 10**9, l2=50 * 2**20,
                 clock_ghz=1.98, bandwidth=PUBLISHED['H100']['hbm_bytes_per_s']),
    'h200': dict(name='NVIDIA H200', sms=132, memory=141 * 10**9, l2=50 * 2**20,
                 clock_ghz=1.98, bandwidth=PUBLISHED['H200']['hbm_bytes_per_s']),
}


def target_config(gpu: dict) -> str:
  """The GPU's description for XLA (a GpuTargetConfigProto in text form)."""
  return f'''gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  shared_memory_per_block_optin: 232448
  threads_per_core_limit: 2048
  core_count: {gpu['sms']}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu['bandwidth'])}
  l2_cache_size: {gpu['l2']}
  clock_rate_ghz: {gpu['clock_ghz']}
  device_memory_size: {gpu['memory']}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
device_description_str: "{gpu['name']}"
'''


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--gpu', choices=sorted(GPUS), default='h100')
  parser.add_argument('--count', type=int, default=1, help='GPUs on the host: 1, 2, 4 or 8')
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'imagenet128.py'))
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'compile'))
  args = parser.parse_args()
  gpu = GPUS[args.gpu]
  config = from_file(args.config, dtype=args.dtype, batch_size=args.batch_size,
                     attention_impl='xla')
  validate(config, args.count, 1, platform='nvidia_gpu')
  devices = topologies.get_topology_desc(args.gpu, 'cuda', target_config=target_config(gpu),
                                         topology=f'1x1x{args.count}').devices
  update = make_update(config, make_mesh(devices), 'nvidia_gpu')
  start = time.perf_counter()
  step, needed = memory.compile_step(update)
  seconds = time.perf_counter() - start
  text = step.as_text() if step is not None else ''
  report = {
      'gpu': gpu['name'], 'count': args.count, 'config': os.path.basename(args.config),
      'dtype': args.dtype, 'batch_size': args.batch_size, 'compile_s': round(seconds, 1),
      'memory': needed.as_dict(), 'gib_per_gpu': round(needed.peak / GIB, 2),
      'fits_preallocated': needed.fits(int(PREALLOCATED * gpu['memory'])),
      'fits_all': needed.fits(gpu['memory']),
      'collectives': aot.collectives(text), 'cudnn_attention': '__cudnn$fmha' in text}
  print(json.dumps(report, indent=1))
  os.makedirs(args.out, exist_ok=True)
  name = f'gpu_{os.path.basename(args.config)[:-3]}_{args.gpu}x{args.count}_b{args.batch_size}_{args.dtype}.json'
  with open(os.path.join(args.out, name), 'w') as f:
    json.dump(report, f, indent=1)


if __name__ == '__main__':
  main()
