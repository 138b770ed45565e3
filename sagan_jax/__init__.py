"""Self-Attention GAN (Zhang et al. 2018) in JAX/Flax."""
