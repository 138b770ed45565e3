"""Runs a test worker script as several jax.distributed processes on localhost."""
import json
import os
import socket
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
# Tests compile far more than they run. The lowest LLVM optimisation level compiles
# about 40% faster on CPU and runs tiny models about 15% slower; XLA's loop emitters
# instead of its MLIR fusion emitters compile the tiny train step in ~25% less CPU time
# (jaxlib 0.10.2, measured 2026-12-03). A test that runs more than it compiles (the
# learning test) leaves them out.
TEST_XLA_FLAGS = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false')


def single_device_env(**extra) -> dict:
  """This process's environment for a child with one CPU device (or as many as
  JAX_NUM_CPU_DEVICES says) instead of the 8 simulated ones."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([os.path.dirname(TESTS), TESTS]), **extra)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if not f.startswith('--xla_force_host_platform_device_count'))
  return env


def run_workers(script: str, num_processes: int, devices_per_process: int, *args) -> list[dict]:
  """Starts `script PORT PROCESS_ID NUM_PROCESSES *args` once per process; returns
  the JSON each printed last."""
  env = single_device_env(JAX_NUM_CPU_DEVICES=str(devices_per_process))
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  workers = [subprocess.Popen(
      [sys.executable, os.path.join(TESTS, script), str(port), str(i), str(num_processes),
       *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(num_processes)]
  outputs = []
  for worker in workers:
    out, err = worker.communicate(timeout=400)
    assert worker.returncode == 0, err[-3000:]
    outputs.append(json.loads(out.strip().splitlines()[-1]))
  return outputs
