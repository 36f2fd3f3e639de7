"""vaflow: video-to-audio generation by flow matching from video features to audio latents."""
