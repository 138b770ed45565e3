"""Runs a test worker script as several jax.distributed processes on localhost."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

TESTS = os.path.dirname(os.path.abspath(__file__))
# Tests compile far more than they run: the lowest LLVM optimisation level compiles faster
# and runs tiny models a little slower, and XLA's loop emitters compile the tiny train step
# in less CPU time than its MLIR fusion emitters (BENCHMARKS_LOG.md). A test that runs more
# than it compiles (the learning test) leaves them out.
TEST_XLA_FLAGS = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false')


def single_device_env(**extra) -> dict:
  """This process's environment for a child with one CPU device (or as many as
  JAX_NUM_CPU_DEVICES says) instead of the 8 simulated ones."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([os.path.dirname(TESTS), TESTS]), **extra)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if not f.startswith('--xla_force_host_platform_device_count'))
  return env


def run_workers(script: str, num_processes: int, devices_per_process: int, *args,
                timeout: float = 400) -> list[dict]:
  """Starts `script PORT PROCESS_ID NUM_PROCESSES *args` once per process; returns the JSON
  each printed last. Their output goes to files (a chatty process never blocks on a full
  pipe while the others wait for it at a collective); when one fails, or the time is up,
  the others are ended at once and the failure names the process and its last lines."""
  env = single_device_env(JAX_NUM_CPU_DEVICES=str(devices_per_process))
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  with tempfile.TemporaryDirectory() as tmp:
    files = [tuple(open(os.path.join(tmp, f'{i}.{kind}'), 'w+') for kind in ('out', 'err'))
             for i in range(num_processes)]
    workers = [subprocess.Popen(
        [sys.executable, os.path.join(TESTS, script), str(port), str(i), str(num_processes),
         *map(str, args)], env=env, stdout=out, stderr=err, text=True)
               for i, (out, err) in enumerate(files)]
    deadline = time.monotonic() + timeout
    while (any(w.poll() is None for w in workers) and not any(w.poll() for w in workers)
           and time.monotonic() < deadline):
      time.sleep(0.2)
    failed = [i for i, w in enumerate(workers) if w.poll()]
    ended = [i for i, w in enumerate(workers) if w.poll() is None]
    for i in ended:
      workers[i].kill()
      workers[i].wait()
    logs = []
    for out, err in files:
      out.seek(0)
      err.seek(0)
      logs.append((out.read(), err.read()))
      out.close()
      err.close()
  for i in failed or ended:
    why = 'failed' if failed else f'gave no result in {timeout} s and was ended'
    raise AssertionError(f'process {i} of {num_processes} {why}:\n{logs[i][1][-3000:]}')
  outputs = [json.loads(out.strip().splitlines()[-1]) for out, _ in logs]
  return outputs
