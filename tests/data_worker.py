"""One process of the two-process data test (see test_data.py).

Usage: python data_worker.py PORT PROCESS_ID NUM_PROCESSES DATA_DIR
Prints one JSON line: the ids of the test-split examples this process reads,
and the shape of its part of a training batch.
"""
import json
import sys

import jax
import tensorflow_datasets as tfds

from sagan_jax import input_pipeline
from tiny_config import tiny_config


def main(port, process_id, num_processes, data_dir):
  jax.distributed.initialize(f'localhost:{port}', int(num_processes), int(process_id))
  config = tiny_config(dataset='sagan_shapes', data_dir=data_dir, num_classes=10)
  builder = input_pipeline.get_builder(config)
  ds = builder.as_dataset(split=input_pipeline.process_split('test'),
                          read_config=tfds.ReadConfig(add_tfds_id=True))
  ids = [example['tfds_id'].decode() for example in tfds.as_numpy(ds)]
  batch = next(input_pipeline.create_train_iterator(config))
  print(json.dumps({'ids': ids, 'batch_shape': list(batch['image'].shape)}), flush=True)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(*sys.argv[1:])
