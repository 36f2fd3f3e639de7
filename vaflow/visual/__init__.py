"""Visual encoders: open_clip CLIP, CAVP-style, pixels."""
