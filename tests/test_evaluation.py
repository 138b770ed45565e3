"""The embedded dataset's classifier, the evaluation path and --mode=eval."""
import json
import os

import numpy as np
import pytest

from processes import single_device_env
from sagan_jax import classifier, evaluation, metrics, modes, train
from tiny_config import shapes_config


@pytest.fixture(scope='module')
def classifier_weights(tmp_path_factory):
  params, accuracy = classifier.train(steps=60)
  assert accuracy > 0.5  # 10 classes; 60 steps already separate most of them
  path = str(tmp_path_factory.mktemp('classifier') / 'weights.npz')
  classifier.save(params, path)
  return path


@pytest.mark.parametrize('dataset, accuracy', [('sagan_shapes', 0.99), ('sagan_digits', 0.98)])
def test_shipped_classifiers_know_the_test_splits(dataset, accuracy):
  """The weights evaluation uses by default (sagan_jax/assets) classify each embedded
  dataset's test split (for the digits: 1,000 real digits it never saw)."""
  images, labels = classifier.split_arrays('test', dataset)
  extractor = evaluation.Extractor('classifier', classifier.shipped(dataset), train.make_mesh(),
                                   10)
  _, logits = extractor(images)
  assert (logits.argmax(-1) == labels).mean() >= accuracy


def test_eval_mode_writes_the_metrics_and_is_deterministic(runs, classifier_weights, tmp_path):
  options = modes.Options(eval_samples=48, sample_batch_size=16,
                          classifier_weights=classifier_weights,
                          out=str(tmp_path / 'a'))
  [path] = modes.evaluate(runs[1], options)
  result = json.load(open(path))
  assert path.endswith('classifier_ema_0000004.json')
  assert result['step'] == 4 and result['num_samples'] == 48
  assert result['frechet_distance'] > 0 and 1 <= result['classifier_score'] <= 10
  # The class accuracy is the classifier's argmax against the classes asked for, on the
  # same samples drawn again here (classes in turn, the options' seed and batch).
  sampler = modes.Sampler(runs[1], options)
  images, labels = evaluation.generate(sampler.image_sampler, sampler.variables, sampler.config,
                                       48, 16, options.seed)
  assert list(labels[:12]) == list(range(10)) + [0, 1]
  logits = evaluation.Extractor('classifier', classifier_weights, sampler.mesh, 10)(images)[1]
  assert result['class_accuracy'] == pytest.approx(float((logits.argmax(-1) == labels).mean()))
  assert result['classifier_score'] == pytest.approx(metrics.inception_score(logits)[0], rel=1e-5)
  options.out = str(tmp_path / 'b')
  again = json.load(open(modes.evaluate(runs[1], options)[0]))
  for key in ('frechet_distance', 'classifier_score', 'kernel_distance', 'class_accuracy'):
    assert again[key] == result[key], key


def test_frechet_distance_of_real_images_is_small_and_of_noise_large(tfds_dir, runs,
                                                                     classifier_weights):
  config = shapes_config(tfds_dir)
  extractor = evaluation.Extractor('classifier', classifier_weights, train.make_mesh(), 10)
  reference = evaluation.reference_statistics(config, extractor, 'train', 1000, runs[1])
  test_features, _ = extractor(evaluation.dataset_images(config, 'test', 1000))
  noise = np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), np.uint8)
  noise_features, _ = extractor(noise)
  from sagan_jax import metrics
  fd = lambda f: metrics.frechet_distance(*metrics.moments(f), reference['mu'],
                                          reference['sigma'])
  assert fd(test_features) * 10 < fd(noise_features)
  # score() keeps the reference's k-NN radii in it for the next score, with the numbers
  # of a reference scored against for the first time.
  images, labels = next(evaluation.dataset_batches(config, 'test', 200))
  first = evaluation.score(images, labels, extractor, reference)
  kept = reference['knn_radii']
  assert kept['all'].shape == (2, len(reference['features'])) and len(kept['per_class']) == 10
  assert evaluation.score(images, labels, extractor, reference) == first
  fresh = {k: v for k, v in reference.items() if k != 'knn_radii'}
  assert evaluation.score(images, labels, extractor, fresh) == first


def test_intra_class_distances_compare_each_class_with_the_same_real_class(
    tfds_dir, classifier_weights, tmp_path):
  config = shapes_config(tfds_dir)
  extractor = evaluation.Extractor('classifier', classifier_weights, train.make_mesh(), 10)
  reference = evaluation.class_reference(config, extractor, 'train', [3, 1], str(tmp_path))
  labels = np.concatenate([y for _, y in evaluation.dataset_batches(config, 'train')])
  np.testing.assert_array_equal(np.sort(reference['labels']),
                                np.sort(labels[np.isin(labels, [1, 3])]))  # all, and only those
  images, test_labels = next(evaluation.dataset_batches(config, 'test', classes=[1, 3]))
  assert set(test_labels) == {1, 3}
  features, _ = extractor(images)
  right = evaluation.intra_class_distances(features, test_labels, reference, [1, 3])
  swapped = evaluation.intra_class_distances(features, 4 - test_labels, reference, [1, 3])
  assert max(right.values()) * 5 < min(swapped.values())


def test_eval_mode_intra_class(runs, classifier_weights, tfds_dir, tmp_path):
  options = modes.Options(eval_samples=40, sample_batch_size=16,
                          classifier_weights=classifier_weights,
                          intra_class='3,1', out=str(tmp_path))
  result = json.load(open(modes.evaluate(runs[1], options)[0]))
  per_class = result['intra_frechet_distance_classes']
  assert sorted(per_class) == ['1', '3'] and min(per_class.values()) > 0
  assert result['intra_frechet_distance'] == pytest.approx(np.mean(list(per_class.values())))
  for spec, num, message in (('12', 40, r"--intra_class='12': class 12 is out of range"),
                             ('all', 19, r'at least 2 samples of each class: --eval_samples=20'),
                             ('', 5, r'--eval_samples=5: at least 6 \(density and coverage')):
    with pytest.raises(modes.ModeError, match=message):
      modes.evaluate(runs[1], modes.Options(eval_samples=num, intra_class=spec,
                                            classifier_weights=classifier_weights))
  with pytest.raises(modes.ModeError, match=r'--eval_samples=5: at least 6'):
    modes.reference(shapes_config(tfds_dir), str(tmp_path), modes.Options(eval_samples=5))


def test_reference_command_fills_the_directory_runs_read(tfds_dir, classifier_weights, tmp_path):
  import subprocess
  import sys
  from tiny_config import ROOT
  shared = tmp_path / 'shared'
  subprocess.run([sys.executable, 'main.py', '--mode=reference', '--config=tests/tiny_config.py',
                  f'--workdir={tmp_path / "run"}', f'--config.data_dir={tfds_dir}',
                  f'--config.reference_dir={shared}', '--eval_samples=500', '--intra_class=2',
                  f'--classifier_weights={classifier_weights}'],
                 cwd=ROOT, check=True, capture_output=True, env=single_device_env())
  assert sorted(os.listdir(shared)) == ['sagan_shapes_32_classifier_train_500.npz',
                                        'sagan_shapes_32_classifier_train_classes_2.npz']
  config = shapes_config(tfds_dir, reference_dir=str(shared))
  assert evaluation.reference_dir(config, str(tmp_path / 'run')) == str(shared)
  extractor = evaluation.Extractor('classifier', classifier_weights, train.make_mesh(), 10)
  fresh = evaluation.reference_statistics(config, extractor, 'train', 500, str(tmp_path / 'new'))
  with np.load(shared / 'sagan_shapes_32_classifier_train_500.npz') as written:
    np.testing.assert_allclose(written['mu'], fresh['mu'], rtol=1e-5)
    np.testing.assert_allclose(written['sigma'], fresh['sigma'], rtol=1e-4, atol=1e-6)


def test_eval_without_weights_says_how_to_get_them(runs, tmp_path):
  with pytest.raises(modes.ModeError, match='python -m sagan_jax.classifier'):
    modes.evaluate(runs[1], modes.Options(classifier_weights=str(tmp_path / 'none.npz')))
  with pytest.raises(modes.ModeError, match='python -m sagan_jax.convert_inception'):
    modes.evaluate(runs[1], modes.Options(features='inception'))


def test_training_evaluates_and_keeps_the_best_checkpoint_apart(tfds_dir, classifier_weights,
                                                                  tmp_path):
  from sagan_jax import checkpoint
  config = shapes_config(tfds_dir, num_train_steps=6, eval_every_steps=2, eval_num_samples=32,
                         classifier_weights=classifier_weights, checkpoint_every_steps=2,
                         checkpoints_to_keep=1, eval_intra_class='0,1')
  train.train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  evals = {line['step']: line for line in lines if 'eval/ema/frechet_distance' in line}
  assert sorted(evals) == [2, 4, 6]
  assert all({'eval/raw/frechet_distance', 'eval/ema/class_accuracy',
              'eval/ema/intra_frechet_distance'} <= set(e) for e in evals.values())
  best_step = min(evals, key=lambda s: evals[s]['eval/ema/frechet_distance'])
  assert sorted(int(n) for n in os.listdir(tmp_path / 'checkpoints_best') if n.isdigit()) == [
      best_step]
  assert sorted(int(n) for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit()) == [6]
  _, _, step = checkpoint.restore_generator(str(tmp_path), train.make_mesh(), best=True)
  assert step == best_step


def test_colours_recover_the_embedded_datasets_random_colours():
  from sagan_jax import shapes_dataset
  image = np.zeros((32, 32, 3), np.uint8) + np.uint8([25, 51, 0])  # background
  image[8:20, 10:22] = [230, 128, 153]  # a square foreground
  vectors, both = shapes_dataset.colours(np.stack([image, np.zeros_like(image)]))
  np.testing.assert_allclose(vectors[0], np.array([230, 128, 153, 25, 51, 0]) / 255, atol=1e-5)
  assert both.tolist() == [True, False]  # an all-dark image has no foreground
  # The dataset draws the foreground from U[0.45, 1]^3 and the background from U[0, 0.3]^3,
  # independently of the class: its colour diversity is the mean distance of two such draws.
  images, labels = map(np.stack, zip(*shapes_dataset.generate(1000, seed=5)))
  rng = np.random.default_rng(0)
  draw = lambda: np.concatenate([rng.uniform(0.45, 1, (200_000, 3)),
                                 rng.uniform(0, 0.3, (200_000, 3))], 1)
  expected = np.linalg.norm(draw() - draw(), axis=1).mean()
  assert abs(evaluation.colour_diversity(images, labels) / expected - 1) < 0.03
  # One colour pair for every image of a class: none.
  same = np.stack([image] * 20)
  assert evaluation.colour_diversity(same, np.arange(20) % 2) < 1e-6
