"""CLIP per-frame image embeddings via open_clip (paper §4.5: semantic features, CLIP per frame at 10 fps).

Weights come only from a local file or from a cache directory the user names; nothing is downloaded and
nothing is left at random initialisation. open_clip is imported lazily: importing it takes seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaflow.errors import did_you_mean
from vaflow.hashing import weights_hash
from vaflow.models.artifacts import ModelFileError, mismatch
from vaflow.models.visual import VisualEncoder, as_frames

__all__ = ["CLIPEncoder", "resolve_clip_weights"]

# Names open_clip itself writes and looks for, in its order of preference (open_clip factory._find_checkpoint_in_dir).
_OPEN_CLIP_WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)


def _expected(model_name: str) -> str:
    return f"an open_clip state dict for {model_name}, e.g. open_clip_pytorch_model.bin or open_clip_model.safetensors"


def resolve_clip_weights(
    model_name: str,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    pretrained: str | None = None,
) -> Path:
    """The local weight file for `model_name`: `weights` itself, or the file open_clip would have cached
    for tag `pretrained` under `cache_dir` (Hugging Face hub layout or a plain download). Never downloads.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():  # a folder holding the file under one of open_clip's names
            inside = [path / name for name in _OPEN_CLIP_WEIGHT_NAMES if (path / name).is_file()]
            if not inside:
                raise ModelFileError(
                    f"CLIP weights not found: folder {path} holds none of {list(_OPEN_CLIP_WEIGHT_NAMES)}; "
                    f"expected {_expected(model_name)}"
                )
            return inside[0]
        if not path.is_file():
            raise ModelFileError(
                f"CLIP weights not found: {path} does not exist; expected {_expected(model_name)}"
            )
        return path
    if cache_dir is None or pretrained is None:
        raise ModelFileError(
            f"no CLIP weights given for {model_name}: pass weights=<file> ({_expected(model_name)}), "
            "or cache_dir=<your open_clip cache> with pretrained=<tag>; vaflow never downloads weights"
        )
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelFileError(
            f"open_clip knows no pretrained tag {pretrained!r} for {model_name}; known tags: {tags}"
        )
    cache_dir = Path(cache_dir).expanduser()
    looked: list[str] = []  # patterns, for the error message
    found: list[Path] = []  # existing files, in open_clip's order of preference
    if cfg.get("hf_hub"):
        # 'org/repo/' or 'org/repo/filename': huggingface_hub caches as models--org--repo/snapshots/<rev>/<file>.
        hub = cfg["hf_hub"]
        repo_id, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
        snapshots = cache_dir / ("models--" + repo_id.replace("/", "--")) / "snapshots"
        for name in [filename] if filename else _OPEN_CLIP_WEIGHT_NAMES:
            looked.append(str(snapshots / "*" / name))
            found += sorted(snapshots.glob(f"*/{name}"))
    if cfg.get("url"):
        path = cache_dir / os.path.basename(cfg["url"])  # a plain download keeps the URL's file name
        looked.append(str(path))
        found.append(path)
    for path in found:
        if path.is_file():
            return path
    raise ModelFileError(
        f"CLIP weights for {model_name}:{pretrained} not found in cache {cache_dir}; looked for {looked}; "
        f"expected {_expected(model_name)}"
    )


def _describe_mismatch(model: nn.Module, path: Path) -> str:
    """Name the first keys that differ between the file and the model (missing, unexpected, shape)."""
    import open_clip

    try:
        state = open_clip.factory.load_state_dict(str(path), weights_only=True)
    except Exception as e:  # unreadable: the caller's message already says so
        return f"the file could not be read as a state dict ({type(e).__name__}: {e})"
    return mismatch(model.state_dict(), state) or ("keys and shapes agree, but open_clip rejected the file")


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns "initialized randomly" while building the empty model we fill right after; drop that."""
    drop = _DropRandomInitWarning()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def _load_strict(model: nn.Module, path: Path, model_name: str) -> None:
    """Load a whole open_clip checkpoint with strict key checking, re-raising failures with key names."""
    import open_clip

    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as e:
        raise ModelFileError(
            f"{path} does not fit open_clip {model_name}: {_describe_mismatch(model, path)}; "
            f"expected {_expected(model_name)}"
        ) from e


class CLIPEncoder(VisualEncoder):
    """open_clip image tower applied to every frame: (T, H, W, 3) uint8 -> (T, embed_dim).

    Weights: `weights` (a file, or a folder holding open_clip_pytorch_model.bin / open_clip_model.safetensors),
    or `cache_dir` + `pretrained` tag. OpenAI's weights were trained with QuickGELU, which no parameter reveals:
    load them as "ViT-B-32-quickgelu" (or quick_gelu=True, or via their tag "openai"), else features are wrong.
    """

    kind = "clip"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        weights: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,  # the user's open_clip cache, searched for tag `pretrained`
        pretrained: str
        | None = None,  # an open_clip tag (e.g. "laion2b_s34b_b79k"): picks the file and preprocessing
        fps: float = 10.0,  # paper §4.5: CLIP per frame at 10 fps
        normalize: bool = True,  # unit-norm embeddings, the space CLIP's contrastive loss was trained in
        batch_size: int = 64,  # frames per forward pass
        quick_gelu: bool
        | None = None,  # None: from the tag; OpenAI weights need True (no parameter shows it)
        device: str | torch.device = "cpu",
    ) -> None:
        import open_clip

        super().__init__()
        if ":" in model_name:  # 'hf-hub:' would download; 'local-dir:' would load weights behind our back
            raise ValueError(
                f"model_name {model_name!r}: give an open_clip config name, not a hub or folder schema"
            )
        if open_clip.get_model_config(model_name) is None:
            hint = did_you_mean(model_name, open_clip.list_models())
            raise ValueError(f"open_clip has no model config {model_name!r}{hint}")
        path = resolve_clip_weights(model_name, weights, cache_dir, pretrained)
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
        if quick_gelu is None:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        # The tag's preprocessing (mean/std/interpolation) applies even though we load the file ourselves.
        preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        with _quiet_random_init_warning():
            model = open_clip.create_model(
                model_name,
                pretrained=None,
                pretrained_image=False,  # no tower-default downloads either
                pretrained_text=False,
                force_quick_gelu=quick_gelu,
                force_preprocess_cfg=preprocess,
            )
        _load_strict(model, path, model_name)
        self._setup(model, model_name, weights_hash(path), fps, normalize, batch_size)
        self.extra = {"pretrained": pretrained, "quick_gelu": quick_gelu}
        self.to(device)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        model_name: str,
        *,
        weights_hash: str = "none",
        fps: float = 10.0,
        normalize: bool = True,
        batch_size: int = 64,
    ) -> CLIPEncoder:
        """Wrap an open_clip model already in memory (benchmarks, tests); `weights_hash` says what it holds."""
        self = cls.__new__(cls)
        VisualEncoder.__init__(self)
        self._setup(model, model_name, weights_hash, fps, normalize, batch_size)
        self.extra = {}
        return self.to(next(model.parameters()).device)

    def _setup(
        self,
        model: nn.Module,
        model_name: str,
        weights_hash: str,
        fps: float,
        normalize: bool,
        batch_size: int,
    ) -> None:
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        if fps <= 0 or batch_size <= 0:
            raise ValueError(f"fps and batch_size must be positive, got fps={fps}, batch_size={batch_size}")
        self.model = model.eval().requires_grad_(False)
        cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
        # open_clip's own eval transform (resize, centre crop, Normalize); its PIL-only steps pass tensors through,
        # and the remaining steps take batched float tensors (N, 3, H, W) in [0, 1].
        self.preprocess = image_transform_v2(cfg, is_train=False)
        size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
        self.input_size = (int(size[0]), int(size[1]))
        self.model_name = model_name
        self.weights_hash = weights_hash
        self.fps = float(fps)
        self.normalize = normalize
        self.batch_size = int(batch_size)
        with torch.no_grad():
            probe = torch.zeros(1, 3, *self.input_size, device=next(model.parameters()).device)
            self.dim = int(model.encode_image(probe).shape[-1])

    def preprocess_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> normalised model input (N, 3, S, S) float32, open_clip's eval transform."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W) in [0, 1], what ToTensor would give
        return self.preprocess(x)  # (N, 3, S, S)

    @torch.inference_mode()
    def encode_batch(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frames (B, T, H, W, 3) uint8 -> per-frame embeddings (B, T, D) float32, `batch_size` frames at a time."""
        frames = as_frames(frames, self.input_size)
        if frames.ndim != 5:
            raise ValueError(f"encode_batch takes (B, T, H, W, 3), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)  # (B·T, H, W, 3)
        cuda = self.device.type == "cuda"
        # bf16 autocast on GPU only: CPU bf16 is slow and the CPU path must reproduce fp32 exactly.
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        out = []
        for start in range(0, flat.shape[0], self.batch_size):
            x = self.preprocess_frames(flat[start : start + self.batch_size].to(self.device))  # (n, 3, S, S)
            with autocast:
                e = self.model.encode_image(x)  # (n, D)
            e = e.float()
            if self.normalize:  # after the cast, so the norm is exact even under bf16
                e = F.normalize(e, dim=-1)
            out.append(e)
        return torch.cat(out).reshape(b, t, self.dim)  # (B, T, D)

    def extra_identity(self) -> dict[str, Any]:
        return {"normalize": self.normalize, **self.extra}
