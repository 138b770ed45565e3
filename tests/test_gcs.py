"""main.py end to end on gs://, offline: a local Cloud Storage emulator (gcp-storage-emulator,
in memory) serves a bucket holding the dataset and the workdir. Orbax
writes and restores checkpoints there through tensorstore, ArrayRecord reads the dataset
through Riegeli's GCS reader, and every other file (TensorBoard's events too) goes
through etils.epath (gcsfs here, see helpers/gcs_main.py). Nothing may land on the local
disk under a 'gs:' name.

Not covered offline: TensorFlow's own gs:// filesystem, which epath uses instead of gcsfs
when TensorFlow is installed."""
import json
import os
import re
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from processes import single_device_env
from sagan_jax import input_pipeline
from tiny_config import shapes_config

TESTS = os.path.dirname(os.path.abspath(__file__))


def complete_downloads(server_module, objects) -> None:
  """Two things Cloud Storage does on a download that the emulator does not:
  - `Range: bytes=-N` gives an object's last N bytes (Riegeli reads a file's end that
    way); the emulator ignores such a range. It is rewritten as `bytes=START-`.
  - The response names the object's generation in `x-goog-generation` (tensorstore
    needs it for its conditional writes)."""
  def wrap(handler):
    def handle(request, response, storage, *args, **kwargs):
      try:
        obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      except Exception:  # not there: the handler answers 404
        return handler(request, response, storage, *args, **kwargs)
      suffix = re.fullmatch(r'\s*bytes=-(\d+)', request.get_header('range', '') or '')
      if suffix:
        headers = request._request_handler.headers
        del headers['range']
        headers['range'] = f'bytes={max(0, int(obj["size"]) - int(suffix.group(1)))}-'
      handler(request, response, storage, *args, **kwargs)
      response['x-goog-generation'] = obj['generation']
    return handle
  server_module.HANDLERS = tuple(
      (pattern, {method: wrap(f) if f in (objects.download, objects.get) else f
                 for method, f in handlers.items()})
      for pattern, handlers in server_module.HANDLERS)


@pytest.fixture(scope='module')
def emulator():
  """The emulator's URL; its one bucket is 'bucket'."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects
  handlers = server.HANDLERS
  complete_downloads(server, objects)
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  gcs = server.create_server('localhost', port, in_memory=True, default_bucket='bucket')
  gcs.start()
  # Clients that close a connection early (a reader that has what it needs) are fine.
  gcs._api._httpd.handle_error = lambda *args: None
  yield f'http://localhost:{port}'
  gcs.stop()
  server.HANDLERS = handlers


def upload(url: str, name: str, data: bytes) -> None:
  query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
  urllib.request.urlopen(urllib.request.Request(
      f'{url}/upload/storage/v1/b/bucket/o?{query}', data=data, method='POST')).close()


def listing(url: str, prefix: str) -> list[str]:
  """Object names under gs://bucket/PREFIX, relative to it."""
  query = urllib.parse.urlencode({'prefix': prefix})
  with urllib.request.urlopen(f'{url}/storage/v1/b/bucket/o?{query}') as response:
    return sorted(item['name'][len(prefix):] for item in json.load(response).get('items', []))


def download(url: str, name: str) -> bytes:
  with urllib.request.urlopen(
      f'{url}/download/storage/v1/b/bucket/o/{urllib.parse.quote(name, safe="")}?alt=media') as r:
    return r.read()


def run(url, cwd, *args) -> str:
  """gcs_main.py (main.py) with gs:// on the emulator; its stderr."""
  # gcsfs's, tensorstore's and Riegeli's (google-cloud-cpp's) endpoint settings.
  env = single_device_env(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                          CLOUD_STORAGE_EMULATOR_ENDPOINT=url, GOOGLE_AUTH_TOKEN_FOR_TESTING='x')
  script = os.path.join(TESTS, 'helpers', 'gcs_main.py')
  result = subprocess.run([sys.executable, script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


@pytest.mark.slow
def test_training_and_resuming_with_data_and_workdir_on_gs(emulator, tfds_dir, runs, tmp_path):
  version_dir = input_pipeline.get_builder(shapes_config(tfds_dir)).data_dir
  for name in os.listdir(version_dir):
    with open(os.path.join(version_dir, name), 'rb') as f:
      upload(emulator, f'tfds/sagan_shapes/{os.path.basename(version_dir)}/{name}', f.read())
  flags = lambda steps: ['--config=tests/tiny_config.py', '--workdir=gs://bucket/run',
                         '--config.data_dir=gs://bucket/tfds', f'--config.num_train_steps={steps}',
                         '--config.checkpoint_every_steps=2', '--config.sample_every_steps=2']
  os.symlink(os.path.join(os.path.dirname(TESTS), 'tests'), tmp_path / 'tests')  # --config

  run(emulator, tmp_path, *flags(2))
  files = listing(emulator, 'run/')
  assert 'checkpoints/2/_CHECKPOINT_METADATA' in files, files
  assert {'samples/0000002_ema.png', 'metrics.jsonl'} <= set(files), files
  resumed = run(emulator, tmp_path, *flags(3))
  assert 'Resumed from the checkpoint of step 2' in resumed, resumed[-3000:]
  jsonl = download(emulator, 'run/metrics.jsonl').decode()
  rows = [json.loads(line) for line in jsonl.splitlines()]
  assert [row['step'] for row in rows] == [1, 2, 3]
  # The same steps as the local run that trained straight through (runs[0]): the model,
  # the optimisers and the data position came back from the bucket.
  with open(os.path.join(runs[0], 'metrics.jsonl')) as f:
    straight = [json.loads(line) for line in f if '"d_loss"' in line][:3]
  for row, expected in zip(rows, straight):
    for key in ('d_loss', 'g_loss'):
      assert row[key] == pytest.approx(expected[key], rel=2e-3), (row['step'], key)
  assert 'checkpoints/3/_CHECKPOINT_METADATA' in listing(emulator, 'run/')
  # TensorBoard's events: one file per run, the resumed run's starting with a session
  # start at step 3.
  assert len([n for n in files if n.startswith('tensorboard/events.out.tfevents')]) == 1, files
  events = [n for n in listing(emulator, 'run/tensorboard/') if n.startswith('events.out')]
  assert len(events) == 2, events
  (tmp_path / 'resumed_events').write_bytes(download(emulator, f'run/tensorboard/{events[1]}'))
  import tensorflow as tf
  resumed_events = list(tf.compat.v1.train.summary_iterator(str(tmp_path / 'resumed_events')))
  assert resumed_events[1].session_log.status == tf.compat.v1.SessionLog.START
  assert resumed_events[1].step == 3
  d_loss = [tf.make_ndarray(v.tensor) for e in resumed_events for v in e.summary.value
            if v.tag == 'd_loss']
  assert d_loss == [pytest.approx(rows[2]['d_loss'])]

  assert not (tmp_path / 'gs:').exists(), 'a gs:// path was written as a local path'
