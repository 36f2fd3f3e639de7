"""Audio: the Oobleck WaveVAE and audio transforms."""
