"""PANNs Cnn14 at 16 kHz: the AudioSet tagger (527 classes) behind av-benchmark's FD_PANNs, KL_PANNs and IS_PANNs.

Reference code: hkchengrex/av-benchmark@050a5cd `av_bench/panns/models.py::Cnn14` (torchlibrosa front end), built in
`extraction_models.py` with sample_rate 16000, window 512, hop 160, 64 mels, fmin 50, fmax 8000, and fed by
`extract.py` / `data/audio_dataset.py` (16 kHz mono clips cut to 8 s, never padded). Official checkpoint:
`Cnn14_16k_mAP=0.438.pth` (zenodo 3987831), a training checkpoint {'iteration', 'model': state_dict, 'sampler'}
whose 'model' av-benchmark loads strictly. The DFT kernels and the mel matrix are in that state dict, so nothing
here needs librosa. The sampler state holds numpy index arrays, so the file is read with weights_only=True and
numpy's array-rebuilding globals allowed, nothing else (av-benchmark itself uses weights_only=False).

Outputs (av-benchmark `evaluate.py`): `embedding` = relu(fc1), its '2048' layer, feeds FD; `logits` = fc_audioset
before the sigmoid, its 'logits' layer, feeds KL (softmax, paired with the reference clip) and IS (softmax).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaflow.models import artifacts
from vaflow.models.reference import fit_length, load_strict

__all__ = [
    "CLIP_SECONDS",
    "NAME",
    "PROTOCOL",
    "SAMPLE_RATE",
    "Cnn14",
    "PANNsFeatures",
    "from_file",
]

NAME = "panns"
EVALUATOR = "PANNs Cnn14 16 kHz"  # how errors name it
SAMPLE_RATE = 16000
CLIP_SECONDS = 8.0  # av-benchmark extract(audio_length=8.0)
CLIP_SAMPLES = 128000  # AudioDataset: audio[: int(sr * audio_length)]; shorter clips are left as they are
N_FFT = 512  # window_size: STFT size and Hann window length
HOP = 160  # hop_size: 10 ms frames
N_MELS = 64
F_MIN = 50.0  # the mel matrix's band edges; the matrix itself comes from the checkpoint
F_MAX = 8000.0
NUM_CLASSES = 527  # AudioSet
EMBED_DIM = 2048
AMIN = 1e-10  # power_to_db floor (ref 1.0, top_db None: no clipping below the maximum)
POOLS = 5  # stride-2 average pools in time and frequency
# Five stride-2 pools need 2**5 frames; centred frames number N // HOP + 1, so N >= 31 * HOP (0.31 s).
MIN_SAMPLES = (2**POOLS - 1) * HOP

PROTOCOL = {
    "evaluator": NAME,
    "sample_rate": SAMPLE_RATE,
    "clip_seconds": CLIP_SECONDS,
    "clip_samples": CLIP_SAMPLES,
    "before": "av-benchmark AudioDataset.read_from_file, done by the caller: torchaudio.load, mean over channels, "
    "minus its mean over the whole file, then torchaudio.transforms.Resample(sr, 16000) (default sinc filter)",
    "fit": "first 128000 samples; shorter clips are not padded (the network pools over any length >= 4960)",
    "stft": {
        "n_fft": N_FFT,
        "hop": HOP,
        "window": "hann (periodic), in the checkpoint's conv_real/conv_imag DFT kernels",
        "center": True,
        "pad_mode": "reflect",
        "power": 2,
    },
    "mel": {
        "n_mels": N_MELS,
        "f_min": F_MIN,
        "f_max": F_MAX,
        "basis": "the checkpoint's logmel_extractor.melW (librosa.filters.mel, slaney), (257, 64)",
    },
    "log": "10 * log10(max(mel, 1e-10)) (ref 1.0, no top_db)",
    "normalise": "bn0 over the 64 mel bins (running statistics)",
    "layers": {
        "fd": "embedding: relu(fc1(x)), av-benchmark '2048'",
        "kl": "logits: fc_audioset output before the sigmoid, av-benchmark 'logits', softmax KL(gt || pred)",
        "is": "logits: same tensor, softmax, 10 splits, shuffled with RandomState(2020)",
    },
    "checkpoint": "Cnn14_16k_mAP=0.438.pth (https://zenodo.org/records/3987831), weights under 'model'",
    "reference_code": "hkchengrex/av-benchmark@050a5cd av_bench/panns/models.py (Cnn14), extraction_models.py, "
    "extract.py, data/audio_dataset.py; qiuqiangkong/audioset_tagging_cnn pytorch/models.py; torchlibrosa 0.1.0",
}


# ----------------------------------------------------------------------------------------------------------------
# Front end: waveform -> log-mel, with the kernels and the mel matrix stored in the checkpoint
# ----------------------------------------------------------------------------------------------------------------


class STFT(nn.Module):
    """torchlibrosa's STFT: a strided Conv1d pair whose kernels are the windowed DFT (real and imaginary parts)."""

    def __init__(self) -> None:
        super().__init__()
        bins = N_FFT // 2 + 1
        self.conv_real = nn.Conv1d(1, bins, kernel_size=N_FFT, stride=HOP, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, kernel_size=N_FFT, stride=HOP, bias=False)

    def forward(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """`wav` (B, N) -> real and imaginary parts, each (B, 257, T) with T = N // HOP + 1."""
        x = F.pad(wav[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")  # (B, 1, N + 512) centred frames
        return self.conv_real(x), self.conv_imag(x)  # (B, 257, 801) each for 8 s


class Spectrogram(nn.Module):
    """The power spectrogram |STFT|^2."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = STFT()

    def forward(self, wav: Tensor) -> Tensor:
        """`wav` (B, N) -> power spectrogram (B, 1, T, 257)."""
        real, imag = self.stft(wav)  # (B, 257, 801)
        power = real**2 + imag**2  # (B, 257, 801)
        return power[:, None].transpose(2, 3)  # (B, 1, 801, 257)


class LogmelFilterBank(nn.Module):
    """Mel projection by the stored matrix `melW`, then decibels."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("melW", torch.empty(N_FFT // 2 + 1, N_MELS))  # (257, 64), from the checkpoint

    def forward(self, power: Tensor) -> Tensor:
        """`power` (B, 1, T, 257) -> log-mel (B, 1, T, 64) in dB."""
        mel = power @ self.melW  # (B, 1, 801, 64)
        return 10.0 * torch.log10(mel.clamp(min=AMIN))  # (B, 1, 801, 64); ref 1.0 subtracts 0 dB


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PANNsFeatures:
    """Cnn14's outputs for a batch: the FD embedding and the KL / IS logits."""

    embedding: Tensor  # (B, 2048) relu(fc1(x)), av-benchmark '2048': FD
    logits: Tensor  # (B, 527) fc_audioset(embedding) before the sigmoid, av-benchmark 'logits': KL and IS


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU layers, then average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor, pool: int) -> Tensor:
        """`x` (B, C_in, T, F) -> (B, C_out, T // pool, F // pool)."""
        x = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, T, F)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, C_out, T, F)
        return F.avg_pool2d(x, kernel_size=pool)  # (B, C_out, T // pool, F // pool)


class Cnn14(nn.Module):
    """PANNs Cnn14 (16 kHz, 64 mels): log-mel front end, six conv blocks, max+mean pooling over time, fc1, head."""

    def __init__(self) -> None:
        super().__init__()
        self.spectrogram_extractor = Spectrogram()
        self.logmel_extractor = LogmelFilterBank()
        self.bn0 = nn.BatchNorm2d(N_MELS)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(EMBED_DIM, EMBED_DIM)
        self.fc_audioset = nn.Linear(EMBED_DIM, NUM_CLASSES)
        self.eval()  # from birth: see `train`

    def train(self, mode: bool = True) -> Cnn14:
        """Stays in eval mode: an evaluator whose BatchNorms must use the checkpoint's running statistics."""
        return super().train(False)

    def logmel(self, wav: Tensor) -> Tensor:
        """`wav` (B, N) at 16 kHz -> log-mel (B, 1, T, 64), T = N // 160 + 1, before bn0."""
        return self.logmel_extractor(self.spectrogram_extractor(wav))  # (B, 1, 801, 64)

    def forward(self, wav: Tensor) -> PANNsFeatures:
        """`wav` (B, N) at 16 kHz, N >= MIN_SAMPLES -> PANNsFeatures (eval mode: dropout and SpecAugment off)."""
        x = self.logmel(wav)  # (B, 1, 801, 64)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # (B, 1, 801, 64) normalised per mel bin
        x = self.conv_block1(x, pool=2)  # (B, 64, 400, 32)
        x = self.conv_block2(x, pool=2)  # (B, 128, 200, 16)
        x = self.conv_block3(x, pool=2)  # (B, 256, 100, 8)
        x = self.conv_block4(x, pool=2)  # (B, 512, 50, 4)
        x = self.conv_block5(x, pool=2)  # (B, 1024, 25, 2)
        x = self.conv_block6(x, pool=1)  # (B, 2048, 25, 2)
        x = x.mean(dim=3)  # (B, 2048, 25) averaged over frequency
        x = x.amax(dim=2) + x.mean(dim=2)  # (B, 2048) max + mean over time
        embedding = F.relu(self.fc1(x))  # (B, 2048)
        logits = self.fc_audioset(embedding)  # (B, 527)
        return PANNsFeatures(embedding=embedding, logits=logits)

    @torch.inference_mode()
    def features(self, wav: Tensor) -> PANNsFeatures:
        """`wav` (B, N) mono float at 16 kHz -> PANNsFeatures on the model's device: the first 8 s (128000 samples)
        as av-benchmark cuts them; shorter clips (>= MIN_SAMPLES) are scored at their own length, unpadded."""
        _check_wav(wav)
        wav = fit_length(wav, min(wav.shape[-1], CLIP_SAMPLES))  # (B, <= 128000) a cut only, as AudioDataset
        return self(wav.to(self.fc1.weight))


def _check_wav(wav: Tensor) -> None:
    """A ValueError unless `wav` is a float (B, N) waveform long enough for Cnn14's five pools."""
    if wav.ndim != 2 or not wav.is_floating_point():
        raise ValueError(
            f"PANNs: expected a float mono waveform (B, N) at {SAMPLE_RATE} Hz, got {tuple(wav.shape)} {wav.dtype}"
        )
    if wav.shape[-1] < MIN_SAMPLES:
        raise ValueError(
            f"PANNs: a clip of {wav.shape[-1]} samples is too short; Cnn14 needs at least {MIN_SAMPLES} "
            f"({MIN_SAMPLES / SAMPLE_RATE:.2f} s at {SAMPLE_RATE} Hz)"
        )


# ----------------------------------------------------------------------------------------------------------------
# Loading the official checkpoint
# ----------------------------------------------------------------------------------------------------------------


def _numpy_globals() -> list:
    """What unpickling numpy arrays needs, under numpy 1 and numpy 2 module names: the official file's 'sampler'
    (training state) holds index arrays. These rebuild arrays and dtypes only; no other global is allowed."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = [np.ndarray, np.dtype, *(getattr(np.dtypes, n) for n in np.dtypes.__all__)]
    for fn in (core._reconstruct, core.scalar):
        allowed += [
            (fn, f"numpy.core.multiarray.{fn.__name__}"),
            (fn, f"numpy._core.multiarray.{fn.__name__}"),
        ]
    return allowed


def from_file(path: str | Path) -> Cnn14:
    """Cnn14 (eval mode, CPU, float32) with the weights of the official `Cnn14_16k_mAP=0.438.pth` at `path` (its
    'model' state dict, loaded strictly); ModelFileError naming the file and the first wrong keys otherwise,
    MissingModelFileError when there is no file."""
    with torch.device("meta"):  # every value comes from the file: allocate without initialising
        model = Cnn14()
    model = model.to_empty(device="cpu")
    with torch.serialization.safe_globals(_numpy_globals()):
        tensors = artifacts.read_tensors(
            path, f"expected the official {EVALUATOR} checkpoint", unwrap=("model",)
        )
    return load_strict(model, path, EVALUATOR, unwrap=("model",), tensors=tensors).requires_grad_(False)
