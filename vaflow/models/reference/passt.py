"""PaSST, the audio network of av-benchmark's FD_PaSST, KL_PaSST and IS_PaSST (paper §4.1 "Metrics").

Network and mel front end come from the maintained package hear21passt==0.0.26 (arch
`passt_s_swa_p16_128_ap476`: PaSST-S SWA, 128 mels, patch 16, stride 10×10, cls + distillation tokens, 527
AudioSet classes), whose model code is that of av-benchmark's pinned fork hkchengrex/passt_hear21@1ab7789; it
is built offline (`pretrained=False`). Weights: the official `passt-s-f128-p16-s10-ap.476-swa.pt`
(kkoutini/PaSST release v0.0.1-audioset), a plain state dict of the net (159 tensors, no prefix), read with
weights_only=True.
Protocol (hkchengrex/av-benchmark@050a5cd, av_bench/extract.py): 32 kHz mono, zero-padded or cut to 10 s,
log-mel (B, 128, 1000), then the net: `logits` (527, raw) feed KL_PaSST (softmax) and IS_PaSST; `embedding`
(768-d, (cls + dist) / 2 after the final norm) feeds FD_PaSST.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vaflow.models.reference import MissingPackageError, fit_length, load_strict

__all__ = [
    "CLIP_SAMPLES",
    "CLIP_SECONDS",
    "NAME",
    "PROTOCOL",
    "SAMPLE_RATE",
    "PaSST",
    "PaSSTFeatures",
    "from_file",
]

NAME = "passt"
EVALUATOR = "PaSST"  # how errors name it
REQUIREMENT = "hear21passt==0.0.26"
ARCH = "passt_s_swa_p16_128_ap476"  # what hear21passt.base.get_basic_model builds, av-benchmark's call
SAMPLE_RATE = 32_000
CLIP_SECONDS = 10.0
# Every clip is zero-padded or cut to this before the mel (av_bench/extract.py): 320000 samples.
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)
N_MELS = 128
N_CLASSES = 527
EMBED_DIM = 768
PATCH = 16  # patch side, stride 10 in both axes: 12 frequency × ((frames - 16) // 10 + 1) time patches
MAX_FRAMES = 1005  # the largest mel length whose time patches (99) the time positional embedding covers

# AugmentMelSTFT exactly as hear21passt.base.get_basic_model builds it; in eval mode the masks and the random
# fmin/fmax shifts are off, and fmax=None resolves to sr // 2 - fmax_aug_range // 2 = 15000 Hz.
MEL_SETTINGS = {
    "n_mels": N_MELS,
    "sr": SAMPLE_RATE,
    "win_length": 800,
    "hopsize": 320,
    "n_fft": 1024,
    "freqm": 48,
    "timem": 192,
    "htk": False,
    "fmin": 0.0,
    "fmax": None,
    "norm": 1,
    "fmin_aug_range": 10,
    "fmax_aug_range": 2000,
}

PROTOCOL = {
    "evaluator": f"PaSST-S SWA ({REQUIREMENT} arch {ARCH}), av-benchmark FD_PaSST / KL_PaSST / IS_PaSST",
    "checkpoint": "passt-s-f128-p16-s10-ap.476-swa.pt (plain state dict of the net, no prefix)",
    "sample_rate": SAMPLE_RATE,
    "clip_seconds": CLIP_SECONDS,
    "clip_samples": CLIP_SAMPLES,
    "fit": "mono waveform at 32 kHz, zero-padded at the end or cut to clip_samples",
    "mel": {
        "pre_emphasis": [-0.97, 1.0],
        "stft": {
            "n_fft": 1024,
            "hop": 320,
            "win_length": 800,
            "window": "hann(periodic=False)",
            "center": True,
        },
        "power": 2,
        "mel_banks": "torchaudio.compliance.kaldi.get_mel_banks(128, 1024, 32000, fmin=0, fmax=15000, "
        "vtln_low=100, vtln_high=-500) padded with one zero column",
        "log": "log(x + 1e-5)",
        "normalise": "(x + 4.5) / 5",
        "frames": 1000,
        "front_end": {"class": "hear21passt.models.preprocess.AugmentMelSTFT", "eval": True, **MEL_SETTINGS},
    },
    "outputs": {
        "logits": "head(embedding): 527 raw AudioSet logits, no sigmoid -> KL_PaSST (softmax), IS_PaSST",
        "embedding": "(x_cls + x_dist) / 2 after the final LayerNorm, 768-d -> FD_PaSST",
        "all": "cat([logits, embedding]), 1295-d (hear21passt mode='all', what av-benchmark stores)",
    },
    "reference_code": "hkchengrex/av-benchmark@050a5cd av_bench/extraction_models.py + extract.py; "
    "hkchengrex/passt_hear21@1ab7789 (model code = PyPI hear21passt==0.0.26)",
}


# ------------------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaSSTFeatures:
    """PaSST's outputs for a batch of clips: the inputs of the PaSST metrics."""

    logits: Tensor  # (B, 527) raw AudioSet logits: KL_PaSST (softmax) and IS_PaSST
    embedding: Tensor  # (B, 768): FD_PaSST

    def mode_all(self) -> Tensor:
        """hear21passt's mode="all" output, cat([logits, embedding]) (B, 1295), as av-benchmark stores it."""
        return torch.cat([self.logits, self.embedding], dim=1)


# ------------------------------------------------------------------------------------------------------------
# The package's modules, built offline and quietly
# ------------------------------------------------------------------------------------------------------------


def _build_hear21passt() -> tuple[nn.Module, nn.Module]:
    """hear21passt's (AugmentMelSTFT, PaSST net) as get_basic_model builds them, without the download."""
    # Imported here, not at module import: the package pulls in timm and torchaudio (seconds), and an install
    # without it should fail only when PaSST is actually used, with the pip line to fix it.
    try:
        from hear21passt.models import passt as passt_code
        from hear21passt.models.preprocess import AugmentMelSTFT
    except ImportError as err:
        raise MissingPackageError(EVALUATOR, REQUIREMENT) from err
    # The package prints the whole model and a "FMAX is None" line while building.
    with contextlib.redirect_stdout(io.StringIO()):
        net = passt_code.get_model(arch=ARCH, pretrained=False)
        mel = AugmentMelSTFT(**MEL_SETTINGS)
    # Its forward prints shape debug lines on the first call while this module global is true.
    passt_code.first_RUN = False
    return mel.eval(), net.eval()


@contextlib.contextmanager
def _quiet_package_warnings() -> Iterator[None]:
    """Hide the package's known, harmless warnings on every call: the torch.stft(return_complex=False) and
    torch.cuda.amp.autocast deprecations, and a 128×1000 input not being the 128×998 the net was declared with
    (the time positional embedding covers both: 99 patches)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"stft with return_complex=False")
        warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Input image size \(128\*\d+\) doesn't match model")
        yield


# ------------------------------------------------------------------------------------------------------------
# The evaluator
# ------------------------------------------------------------------------------------------------------------


class PaSST(nn.Module):
    """av-benchmark's PaSST: hear21passt's mel front end `mel_stft` and network `net` (the file's keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.mel_stft, self.net = _build_hear21passt()
        self.eval()

    def train(self, mode: bool = True) -> PaSST:
        # An evaluator has no training mode: in train mode the front end masks and shifts the mel at random
        # and the net drops patches, so both stay in eval whatever a caller asks.
        return super().train(False)

    def mel(self, wav: Tensor) -> Tensor:
        """wav (B, N) float at 32 kHz, used as it is (no fitting) -> normalised log-mel (B, 128, F),
        F = (N - 1) // 320 + 1 (the pre-emphasis drops one sample): 1000 frames for 10 s."""
        wav = self._check_wav(wav)
        min_samples = MEL_SETTINGS["n_fft"] // 2 + 2  # the STFT's reflect padding needs more than n_fft // 2
        if wav.shape[1] < min_samples:
            raise ValueError(f"PaSST: a waveform needs at least {min_samples} samples, got {wav.shape[1]}")
        with _quiet_package_warnings():
            return self.mel_stft(wav)  # (B, 128, F)

    def forward(self, mel: Tensor) -> PaSSTFeatures:
        """mel (B, 128, F), 16 <= F <= 1005, as `mel` makes it -> logits (B, 527), embedding (B, 768)."""
        if mel.ndim != 3 or mel.shape[1] != N_MELS or not PATCH <= mel.shape[2] <= MAX_FRAMES:
            raise ValueError(
                f"PaSST: expected a mel (B, {N_MELS}, F) with {PATCH} <= F <= {MAX_FRAMES} frames, got "
                f"{tuple(mel.shape)}"
            )
        with _quiet_package_warnings():
            logits, embedding = self.net(mel.unsqueeze(1))  # (B, 527), (B, 768)
        return PaSSTFeatures(logits=logits, embedding=embedding)

    def features(self, wav: Tensor) -> PaSSTFeatures:
        """wav (B, N) float at 32 kHz -> PaSSTFeatures of its first 10 s, zero-padded at the end when shorter,
        exactly as av-benchmark fits every clip: logits (B, 527), embedding (B, 768), on `wav`'s device."""
        wav = fit_length(self._check_wav(wav), CLIP_SAMPLES)  # (B, 320000)
        with torch.inference_mode():
            return self(self.mel(wav))  # mel (B, 128, 1000)

    def _check_wav(self, wav: Tensor) -> Tensor:
        """`wav` as float32 once it is a float (B, N) tensor on the model's device."""
        if wav.ndim != 2 or not wav.is_floating_point():
            raise ValueError(
                f"PaSST: expected a float waveform (B, N) of mono audio at {SAMPLE_RATE} Hz, got "
                f"{tuple(wav.shape)} {wav.dtype}"
            )
        device = self.net.cls_token.device
        if wav.device != device:
            raise ValueError(f"PaSST: the waveform is on {wav.device} but the model on {device}; move one")
        return wav.float()


def from_file(path: str | Path) -> PaSST:
    """PaSST with the official `passt-s-f128-p16-s10-ap.476-swa.pt` weights at `path`, in eval mode.

    The file is the net's plain state dict; a top-level "model" dict is unwrapped as hear21passt's
    checkpoint_filter_fn does. A missing file is MissingModelFileError, any other file a ModelFileError."""
    model = PaSST()
    load_strict(model.net, path, EVALUATOR, unwrap=("model",))
    return model.eval()
