"""Models: alignment VAE, DiT velocity estimator, size registry."""
