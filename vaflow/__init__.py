"""vaflow: video-to-audio generation by flow matching from video features to audio latents."""

from vaflow.cpu import pin as _pin_cpu_kernels

_pin_cpu_kernels()  # before numpy or torch load: the same bytes on every x86-64 CPU with AVX2 (vaflow.cpu)
