"""One process of the two-process data test (see test_data.py).

Usage: python data_worker.py PORT PROCESS_ID NUM_PROCESSES DATA_DIR
Prints one JSON line: the rows of each global batch this process holds, and its
part of the first two training batches (labels, and the sum of the images).
"""
import json
import sys

import jax

from sagan_jax import input_pipeline
from sagan_jax.mesh import make_mesh
from tiny_config import shapes_config


def main(port, process_id, num_processes, data_dir):
  jax.distributed.initialize(f'localhost:{port}', int(num_processes), int(process_id))
  data = input_pipeline.create_train_iterator(shapes_config(data_dir), make_mesh())
  batches = [next(data) for _ in range(2)]
  print(json.dumps({'rows': data.rows, 'batches': [
      {'label': b['label'].tolist(), 'image_sum': int(b['image'].sum())} for b in batches]}),
        flush=True)
  data.close()
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(*sys.argv[1:])
