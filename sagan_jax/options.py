"""The options of main.py's sample, interpolate, attention, eval, reference and compile modes:
each named, typed, defaulted and explained once, here. main.py defines its command-line
flags from these fields; the modes take an `Options`.
A leaf module: flags are parsed before anything heavy is imported."""
import dataclasses

from absl import flags


def option(default, help: str, choices: tuple[str, ...] = ()):  # pylint: disable=redefined-builtin
  return dataclasses.field(default=default, metadata={'help': help, 'choices': choices})


@dataclasses.dataclass
class Options:
  checkpoint_step: int | None = option(None, 'Checkpoint step to load (default: the latest).')
  best: bool = option(False, 'Load from WORKDIR/checkpoints_best (the best evaluated G of '
                      'training with eval_every_steps).')
  generator: str = option('ema', 'EMA or raw generator weights.', ('ema', 'raw'))
  classes: str = option('', "Classes: '3,5,7', 'all', or '' for the config's first "
                        'sample_classes.')
  per_class: int = option(0, "Images per class (0: the config's samples_per_class; "
                          'attention: 1).')
  truncation: float = option(0.0, 'Truncation trick: redraw |z_i| > this (0: none).')
  seed: int = option(0, 'Seed of the noise: the same seed gives the same images.')
  sample_batch_size: int = option(64, 'Images per generator call.')
  standing_stats: int = option(0, "Re-estimate G's batch-norm statistics from this many "
                               'generated batches before sampling (0: the checkpoint\'s).')
  export_samples: int = option(0, 'sample: also export this many images (e.g. 50000).')
  format: str = option('png', 'sample export: PNG files, or one .npz of uint8 NHWC images and '
                       'labels.', ('png', 'npz'))
  strip_images: int = option(8, 'interpolate: images per strip.')
  queries: str = option('', "attention: query pixels 'y,x;y,x' (default: four).")
  eval_samples: int = option(50_000, 'eval: samples to evaluate; eval and reference: real '
                             'images in the reference statistics.')
  features: str = option('', "eval: Inception-v3 (FID, IS, KID) or the embedded dataset's "
                         'classifier (default for it).', ('', 'inception', 'classifier'))
  inception_weights: str = option('', 'eval: the .npz python -m sagan_jax.convert_inception '
                                  'wrote.')
  classifier_weights: str = option('', 'eval: weights of python -m sagan_jax.classifier '
                                   '(default: the shipped ones, sagan_jax/assets).')
  intra_class: str = option('', "eval: also intra-class FID of these classes, '3,5,7' or "
                            "'all' (default: the config's eval_intra_class).")
  topology: str = option('', 'compile: the Cloud TPU slice to compile for, by its sale name: '
                         'v4-N, v5e-N (v5litepod-N), v5p-N, v6e-N, e.g. v5e-256.')
  num_slices: int = option(1, 'compile: slices of --topology joined over the data-centre '
                           'network (multislice).')
  max_batch: bool = option(False, 'compile: also find, by compiling, the largest global batch '
                           'whose train step fits each chip.')
  compile_evaluation: bool = option(True, "compile: also the evaluation's sampler and feature "
                                    'network (Inception: minutes of compiling).')
  out: str = option('', 'Output directory of a mode (default: WORKDIR/<mode>; compile: no '
                    'JSON file without --out or --workdir).')


NAMES = tuple(f.name for f in dataclasses.fields(Options))
# The options of the reference mode (reference statistics of a config's dataset).
REFERENCE = ('eval_samples', 'intra_class', 'features', 'inception_weights',
             'classifier_weights')
# The options of the compile mode (a config's programs compiled for a TPU slice).
COMPILE = ('topology', 'num_slices', 'max_batch', 'compile_evaluation', 'out')


def define_flags(names=NAMES) -> None:
  """absl flags of these Options fields, with their defaults, help and choices."""
  for field in dataclasses.fields(Options):
    if field.name not in names:
      continue
    name, default, meta = field.name, field.default, field.metadata
    define = (flags.DEFINE_enum if meta['choices'] else
              {bool: flags.DEFINE_bool, float: flags.DEFINE_float, str: flags.DEFINE_string}.get(
                  field.type, flags.DEFINE_integer))  # int and int | None: integers
    args = (list(meta['choices']),) if meta['choices'] else ()
    define(name, default, *args, meta['help'])


def from_flags(names=NAMES) -> Options:
  """The Options of the parsed flags (the others keep their defaults)."""
  return Options(**{name: flags.FLAGS[name].value for name in names})
