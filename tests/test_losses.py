import numpy as np
import pytest

from sagan_jax.losses import discriminator_loss, generator_loss

REAL = np.array([2.0, 0.5, -1.0], np.float32)
FAKE = np.array([-2.0, 0.0, 1.5], np.float32)


def softplus(x):
  return np.log1p(np.exp(x))


@pytest.mark.parametrize('kind, d_expected, g_expected', [
    # hinge: mean(relu(1 - real)) + mean(relu(1 + fake)); G: -mean(fake)
    ('hinge', (0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.5) / 3, -(-2.0 + 0.0 + 1.5) / 3),
    # non-saturating: mean(softplus(-real)) + mean(softplus(fake)); G: mean(softplus(-fake))
    ('non_saturating', np.mean(softplus(-REAL)) + np.mean(softplus(FAKE)),
     np.mean(softplus(-FAKE))),
    # Wasserstein: mean(fake) - mean(real); G: -mean(fake)
    ('wasserstein', (-0.5 / 3) - (1.5 / 3), 0.5 / 3),
])
def test_losses_against_hand_computed_values(kind, d_expected, g_expected):
  np.testing.assert_allclose(discriminator_loss(kind, REAL, FAKE), d_expected, rtol=1e-6)
  np.testing.assert_allclose(generator_loss(kind, FAKE), g_expected, rtol=1e-6)


def test_unknown_loss_is_an_error():
  with pytest.raises(ValueError, match='unknown loss'):
    discriminator_loss('least_squares', REAL, FAKE)
