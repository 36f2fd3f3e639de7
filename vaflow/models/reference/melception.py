"""Melception: SpecVQGAN's Inception-v3 classifier of 80-mel 22.05 kHz log-mel spectrograms (309 VGGSound classes).

Reference code: v-iashin/SpecVQGAN@33c601d, `evaluation/feature_extractors/melception.py` (a torchvision `Inception3`
with a 1-channel stem and no max-pools) and `feature_extraction/extract_mel_spectrogram.py` (its input recipe).
Official checkpoint: `melception-21-05-10T09-28-40.pt`, a `torch.save` of {'loss', 'metrics', 'epoch', 'optimizer',
'model': state_dict}; the weights are under "model", with no key prefix. The file holds only tensors, numbers and
dicts, so it is read with weights_only=True (checked here on a file of that layout, not on the official one).

Outputs and metrics (SpecVQGAN `eval_melception_vggsound.yaml`): `embedding` (the pooled 2048-d vector, the
'2048' layer) feeds FD/FID and KID, `logits` (fc with bias) feeds KL, `logits_unbiased` (fc without bias) feeds IS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.inception import BasicConv2d, Inception3

from vaflow.models.reference import fit_length, load_strict

__all__ = [
    "CLIP_SECONDS",
    "NAME",
    "PROTOCOL",
    "SAMPLE_RATE",
    "Melception",
    "MelceptionFeatures",
    "from_file",
    "mel",
    "mel_01",
    "means_stds",
]

NAME = "melception"
SAMPLE_RATE = 22050
CLIP_SECONDS = 10.0
CLIP_SAMPLES = 220500  # get_spectrogram's `length`: 10 s at 22.05 kHz, zero-padded at the end or cut
N_FFT = 1024
HOP = 256  # nfft // 4
N_MELS = 80
F_MIN = 125.0
F_MAX = 7600.0
MEL_FRAMES = 860  # TrimSpec(860): the stored spectrograms are 80 x 860
FRAMES = 848  # the network's training crop (cropped_size [80, 848]); the fixture keeps the first 848 frames
NUM_CLASSES = 309  # VGGSound classes
MEANS_STDS_FILE = (
    "melception_means_stds.txt"  # train_means_stds_melspec_10s_22050hz.txt, shipped beside this file
)

PROTOCOL = {
    "evaluator": NAME,
    "sample_rate": SAMPLE_RATE,
    "clip_seconds": CLIP_SECONDS,
    "clip_samples": CLIP_SAMPLES,
    "fit": "first 220500 samples, zero-padded at the end",
    "stft": {"n_fft": N_FFT, "hop": HOP, "window": "hann (periodic)", "center": True, "pad_mode": "constant"},
    "mel": {
        "n_mels": N_MELS,
        "f_min": F_MIN,
        "f_max": F_MAX,
        "scale": "slaney",
        "norm": "slaney",
        "power": 1,
        "basis_dtype": "float32 (librosa default), applied in float64",
    },
    "log": "clip((20 * log10(max(mel, 1e-5)) - 20 + 100) / 100, 0, 1), first 860 frames, float64",
    "normalise": "(mel - mean[f]) / std[f] with train_means_stds_melspec_10s_22050hz.txt, float64, then float32",
    "crop": "first 848 frames",
    "layers": {
        "fd": "2048 (avgpool, flatten)",
        "kl": "logits (fc)",
        "is": "logits_unbiased (x @ fc.weight.T)",
    },
    "checkpoint": "melception-21-05-10T09-28-40.pt (md5 a71a41041e945b457c7d3d814bbcf72d), weights under 'model'",
    "reference_code": "v-iashin/SpecVQGAN@33c601d evaluation/feature_extractors/melception.py, "
    "feature_extraction/extract_mel_spectrogram.py",
}


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MelceptionFeatures:
    """Melception's outputs for a batch: the FD embedding, the KL logits and the IS logits."""

    embedding: Tensor  # (B, 2048) pooled features, SpecVQGAN's '2048' layer: FD / KID
    logits: Tensor  # (B, 309) fc(x): KL
    logits_unbiased: Tensor  # (B, 309) x @ fc.weight.T, no bias: IS


class Melception(Inception3):
    """torchvision's Inception-v3 on one-channel (80, T) log-mels: 1-channel stem, no max-pools, 309 classes."""

    def __init__(self) -> None:
        # aux_logits=True because the checkpoint holds AuxLogits.* (unused at eval); init_weights=False skips
        # torchvision's slow truncated-normal init, since every weight comes from the file.
        super().__init__(num_classes=NUM_CLASSES, aux_logits=True, transform_input=False, init_weights=False)
        self.Conv2d_1a_3x3 = BasicConv2d(1, 32, kernel_size=3, stride=2)  # one channel: a spectrogram
        # No max-pools: an 80-mel input keeps 8 rows at the last block (with them it would keep 1).
        self.maxpool1 = nn.Identity()
        self.maxpool2 = nn.Identity()

    def forward(self, x: Tensor) -> MelceptionFeatures:
        """`x` (B, 80, T) normalised log-mel (T = 848 in the protocol) -> MelceptionFeatures."""
        if x.ndim != 3 or x.shape[1] != N_MELS:
            raise ValueError(f"Melception: expected a normalised mel (B, {N_MELS}, T), got {tuple(x.shape)}")
        x = x.unsqueeze(1)  # (B, 1, 80, 848)
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 39, 423)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 37, 421)
        x = self.Conv2d_2b_3x3(x)  # (B, 64, 37, 421)
        x = self.maxpool1(x)  # (B, 64, 37, 421) identity
        x = self.Conv2d_3b_1x1(x)  # (B, 80, 37, 421)
        x = self.Conv2d_4a_3x3(x)  # (B, 192, 35, 419)
        x = self.maxpool2(x)  # (B, 192, 35, 419) identity
        x = self.Mixed_5b(x)  # (B, 256, 35, 419)
        x = self.Mixed_5c(x)  # (B, 288, 35, 419)
        x = self.Mixed_5d(x)  # (B, 288, 35, 419)
        x = self.Mixed_6a(x)  # (B, 768, 17, 209)
        x = self.Mixed_6b(x)  # (B, 768, 17, 209)
        x = self.Mixed_6c(x)  # (B, 768, 17, 209)
        x = self.Mixed_6d(x)  # (B, 768, 17, 209)
        x = self.Mixed_6e(x)  # (B, 768, 17, 209); AuxLogits would branch here in training only
        x = self.Mixed_7a(x)  # (B, 1280, 8, 104)
        x = self.Mixed_7b(x)  # (B, 2048, 8, 104)
        x = self.Mixed_7c(x)  # (B, 2048, 8, 104)
        embedding = torch.flatten(self.avgpool(x), 1)  # (B, 2048); dropout is the identity at eval
        logits = self.fc(embedding)  # (B, 309)
        logits_unbiased = embedding @ self.fc.weight.T  # (B, 309)
        return MelceptionFeatures(embedding=embedding, logits=logits, logits_unbiased=logits_unbiased)

    @torch.inference_mode()
    def features(self, wav: Tensor) -> MelceptionFeatures:
        """`wav` (B, N) mono at 22.05 kHz -> MelceptionFeatures (B, ...), through `mel` (the SpecVQGAN recipe)."""
        x = mel(wav.to(self.fc.weight.device))  # (B, 80, 848) float32
        return self(x.to(self.fc.weight.dtype))


# ----------------------------------------------------------------------------------------------------------------
# The input pipeline: waveform -> log-mel in [0, 1] -> normalised crop
# ----------------------------------------------------------------------------------------------------------------


# librosa's slaney scale constants, written as librosa computes them: 1 kHz is at 14.999999999999998 mel, not 15.
_F_SP = 200.0 / 3  # Hz per mel in the linear region
_MIN_LOG_MEL = 1000.0 / _F_SP  # where the log region starts
_LOG_STEP = math.log(6.4) / 27.0  # log-Hz per mel in the log region


def _hz_to_mel(f: Tensor) -> Tensor:
    """Slaney's mel scale (librosa's htk=False): linear below 1 kHz, logarithmic above."""
    return torch.where(f >= 1000.0, _MIN_LOG_MEL + torch.log(f / 1000.0) / _LOG_STEP, f / _F_SP)


def _mel_to_hz(m: Tensor) -> Tensor:
    """The inverse of `_hz_to_mel`."""
    return torch.where(m >= _MIN_LOG_MEL, 1000.0 * torch.exp(_LOG_STEP * (m - _MIN_LOG_MEL)), _F_SP * m)


@cache
def _mel_basis() -> Tensor:
    """librosa.filters.mel(sr=22050, n_fft=1024, fmin=125, fmax=7600, n_mels=80) (slaney scale and norm) as float64
    holding librosa's float32 values, (80, 513). torchaudio's melscale_fbanks(norm="slaney", mel_scale="slaney") is
    the same matrix computed in float32 (up to 1.1e-7 off, 1e-6 in `mel_01`), so it is rebuilt here in float64
    with librosa's order of operations, which gives its float32 values bit for bit."""
    freqs = torch.arange(N_FFT // 2 + 1, dtype=torch.float64) * (
        1.0 / (N_FFT / SAMPLE_RATE)
    )  # (513,) rfftfreq
    lo, hi = _hz_to_mel(torch.tensor([F_MIN, F_MAX], dtype=torch.float64)).tolist()
    # numpy.linspace's values (start + i * step, the last exactly `stop`), which torch.linspace can miss by an ulp
    mels = lo + torch.arange(N_MELS + 2, dtype=torch.float64) * ((hi - lo) / (N_MELS + 1))
    mels[-1] = hi
    edges = _mel_to_hz(
        mels
    )  # (82,) Hz: band i rises from edges[i], peaks at edges[i + 1], ends at edges[i + 2]
    width = edges.diff()  # (81,)
    ramps = edges[:, None] - freqs[None, :]  # (82, 513)
    rising = -ramps[:-2] / width[:-1, None]  # (80, 513)
    falling = ramps[2:] / width[1:, None]  # (80, 513)
    basis = torch.minimum(rising, falling).clamp(min=0.0).float()  # librosa fills a float32 array ...
    area = 2.0 / (edges[2:] - edges[:-2])  # (80,) slaney norm: each band has unit area
    # ... and scales it in place, so the product is rounded to float32 again; SpecVQGAN applies it to float64 |STFT|
    return (basis.double() * area[:, None]).float().double()


@cache
def means_stds() -> Tensor:
    """SpecVQGAN's per-mel training statistics (80, 2) float64: column 0 means, column 1 stds, read from the
    `melception_means_stds.txt` shipped beside this module."""
    text = (Path(__file__).with_name(MEANS_STDS_FILE)).read_text()
    rows = [[float(v) for v in line.split()] for line in text.splitlines() if line.strip()]
    table = torch.tensor(rows, dtype=torch.float64)  # np.loadtxt reads float64
    if table.shape != (N_MELS, 2):
        raise RuntimeError(
            f"{MEANS_STDS_FILE}: expected {N_MELS} rows of (mean, std), got {tuple(table.shape)}"
        )
    return table


def _check_wav(wav: Tensor) -> None:
    """A ValueError unless `wav` is a (B, N) float waveform with N > 0."""
    if wav.ndim != 2 or wav.shape[-1] == 0 or not wav.is_floating_point():
        raise ValueError(
            f"Melception: expected a float mono waveform (B, N) at {SAMPLE_RATE} Hz, "
            f"got {tuple(wav.shape)} {wav.dtype}"
        )


def mel_01(wav: Tensor) -> Tensor:
    """`wav` (B, N) mono at 22.05 kHz -> SpecVQGAN's log-mel in [0, 1], (B, 80, 860) float64.

    The waveform is cut or zero-padded to 10 s and, as the reference does on its float64 copy, processed in float64:
    |STFT| (centred, zero-padded as librosa >= 0.10) -> slaney mel -> max(1e-5) -> 20 log10 -> -20 -> +100 -> /100
    -> clip [0, 1] -> first 860 frames.
    """
    _check_wav(wav)
    wav = fit_length(wav, CLIP_SAMPLES).double()  # (B, 220500)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64, device=wav.device)
    spec = torch.stft(
        wav, N_FFT, HOP, window=window, center=True, pad_mode="constant", return_complex=True
    ).abs()  # (B, 513, 862)
    mel_spec = _mel_basis().to(wav.device) @ spec  # (B, 80, 862)
    db = 20.0 * torch.log10(mel_spec.clamp(min=1e-5))  # (B, 80, 862)
    return ((db - 20.0 + 100.0) / 100.0).clamp(0.0, 1.0)[..., :MEL_FRAMES]  # (B, 80, 860)


def mel(wav: Tensor) -> Tensor:
    """`wav` (B, N) mono at 22.05 kHz -> the network's input (B, 80, 848) float32: `mel_01` normalised per mel bin
    with SpecVQGAN's training statistics (StandardNormalizeAudio, in float64) and cropped to its first 848 frames.

    The first 848 frames follow the fixture (and SpecVQGAN's generated 80 x 848 samples); note that SpecVQGAN's
    FakesFolder feeds a .wav's mel uncropped (860 frames) and its vggishish `Crop` would centre-crop (offset 6).
    """
    x = mel_01(wav)  # (B, 80, 860) float64
    table = means_stds().to(x.device)  # (80, 2)
    x = (x - table[:, 0, None]) / table[:, 1, None]  # (B, 80, 860)
    return x[..., :FRAMES].float()  # (B, 80, 848)


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def from_file(path: str | Path) -> Melception:
    """Melception with the official `melception-21-05-10T09-28-40.pt` weights (its "model" entry), in eval mode;
    ModelFileError naming the evaluator and the first wrong keys if the file is another model's."""
    return load_strict(Melception(), path, "Melception", unwrap=("model",))
