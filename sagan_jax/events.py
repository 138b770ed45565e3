"""TensorBoard event files, written without TensorFlow.

An event file is a sequence of TFRecord records, each a serialized tensorboard `Event`:
its length (uint64, little-endian), the masked CRC-32C of those 8 bytes, the bytes,
their masked CRC-32C. Scalars and images are written as TensorFlow 2's tf.summary
writes them (tensor summaries with the 'scalars' and 'images' plugins' metadata), so
TensorBoard, its EventAccumulator and tf.compat.v1.train.summary_iterator read them.

Why not tf.summary (through clu): importing TensorFlow costs ~7 s of CPU at every
start of main.py, and it only wrote these files. The file goes through etils.epath:
gs:// works (through TensorFlow's gfile where TensorFlow is installed, as before)."""
import io
import os
import socket
import struct
import time

import numpy as np
from etils import epath
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata


def _masked_crc32c(data: bytes) -> int:
  import google_crc32c  # here: only writing needs it (the accelerator check imports this module)
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scalar_value(tag: str, value: float) -> summary_pb2.Summary.Value:
  """A float32 scalar, as tf.summary.scalar writes it."""
  tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.
                                  TensorShapeProto(), float_val=[value])
  return summary_pb2.Summary.Value(tag=tag, tensor=tensor,
                                   metadata=scalar_metadata.create_summary_metadata(tag, ''))


def image_value(tag: str, image: np.ndarray) -> summary_pb2.Summary.Value:
  """One uint8 [H, W, 3] image, as tf.summary.image writes it: a string tensor
  [width, height, PNG]."""
  png = io.BytesIO()
  Image.fromarray(image).save(png, format='PNG')
  height, width = image.shape[:2]
  tensor = tensor_pb2.TensorProto(
      dtype=types_pb2.DT_STRING,
      tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(
          size=3)]),
      string_val=[str(width).encode(), str(height).encode(), png.getvalue()])
  return summary_pb2.Summary.Value(tag=tag, tensor=tensor,
                                   metadata=image_metadata.create_summary_metadata(tag, ''))


class EventFile:
  """A new event file in `logdir`, named as TensorFlow names them (TensorBoard reads a
  directory's files in name order: this one after the earlier runs')."""

  def __init__(self, logdir: epath.Path):
    logdir.mkdir(parents=True, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2'
    self._file = (logdir / name).open('wb')
    self.write(event_pb2.Event(file_version='brain.Event:2'))

  def write(self, event: event_pb2.Event) -> None:
    event.wall_time = event.wall_time or time.time()
    data = event.SerializeToString()
    length = struct.pack('<Q', len(data))
    self._file.write(length + struct.pack('<I', _masked_crc32c(length)) + data +
                     struct.pack('<I', _masked_crc32c(data)))

  def summary(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
    self.write(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=values)))

  def start_session(self, step: int) -> None:
    """A session start at `step`: TensorBoard discards what earlier files logged from
    `step` on (its default --purge_orphaned_data), e.g. what an interrupted run logged
    after the checkpoint its resume starts from."""
    self.write(event_pb2.Event(step=step, session_log=event_pb2.SessionLog(
        status=event_pb2.SessionLog.START)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()
