"""CLIP image features per video clip and CLIP text features per query, as the official LD-DETR features.

The official QVHighlights / Charades-STA features are, per clip, the OpenAI CLIP ViT-B/32 image embedding (512-d,
after the visual projection), and per query the CLIP text encoder's last_hidden_state (N, 512), i.e.
every token incl. start and end token, after the final layer norm, without the text projection.

Image preprocessing runs in torch on batches of frames, on the model's device, and follows the official features'
ffmpeg chain (`scale` then `crop`) and CLIP's processor, which agree on the geometry: resize the shortest side to
`resize_shortest_edge` and the long side to int(long * shortest_edge / short) (truncated), bicubic (antialiased,
rounded to uint8 levels as PIL does); crop the centre at x = int((W - crop) / 2), y = int((H - crop) / 2); scale to
[0, 1], normalise with the checkpoint's mean and std. The sizes and crop offsets equal ffmpeg's; the pixels differ
from ffmpeg's bicubic by one or two levels on average, as CLIP's own processor does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoTokenizer, CLIPTextModel, CLIPVisionModelWithProjection
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .precision import resolve_dtype

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_TIMM_CLIP_MODEL = "timm/vit_base_patch32_clip_224.openai"
IMAGE_BACKENDS = ("transformers", "timm")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers: names the weights whatever folder or revision they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ClipImagePreprocessing:
    resize_shortest_edge: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 3, crop_size, crop_size) float32, normalised."""
        images = self.resize_and_crop(frames)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images / 255.0 - mean) / std

    def resize_and_crop(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 3, crop_size, crop_size) float32 of whole levels in [0, 255]."""
        images = frames.permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
        height, width = images.shape[-2:]
        short = self.resize_shortest_edge
        # as torchvision's Resize(int): the short side is exact, the long side truncated
        size = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        images = images.round_().clamp_(0, 255)
        return _centre_crop(images, self.crop_size)


def _centre_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, crop, crop), zero-padding a side shorter than the crop as torchvision does.

    The offsets are truncated, as ffmpeg's crop=crop:crop:(W-crop)/2:(H-crop)/2 and CLIPImageProcessor; rounding
    them (torchvision) moves the crop one pixel where the margin is odd and its half rounds up."""
    height, width = images.shape[-2:]
    if height < crop or width < crop:
        pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = images.shape[-2:]
    top = (height - crop) // 2
    left = (width - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def _load_transformers_vision(name: str, revision: str | None):
    """CLIPVisionModelWithProjection (image_embeds) and its preprocessing, from a Hub id or a folder."""
    model = CLIPVisionModelWithProjection.from_pretrained(name, revision=revision)
    preprocessing = ClipImagePreprocessing(
        resize_shortest_edge=model.config.image_size,
        crop_size=model.config.image_size,
        mean=tuple(OPENAI_CLIP_MEAN),
        std=tuple(OPENAI_CLIP_STD),
    )
    try:
        processor = AutoImageProcessor.from_pretrained(name, revision=revision)
    except OSError:
        processor = None  # a checkpoint without preprocessor_config.json: CLIP's defaults at the model's image size
    if processor is not None:
        preprocessing = ClipImagePreprocessing(
            resize_shortest_edge=processor.size.get("shortest_edge") or preprocessing.resize_shortest_edge,
            crop_size=(processor.crop_size or {}).get("height") or preprocessing.crop_size,
            mean=tuple(processor.image_mean),
            std=tuple(processor.image_std),
        )

    def embed(pixel_values: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixel_values).image_embeds  # (B, projection_dim)

    return model, embed, preprocessing, model.config.projection_dim


def _timm_model_name(name: str) -> str:
    if os.path.isdir(name):
        return f"local-dir:{name}"
    if name.startswith(("hf-hub:", "local-dir:")) or "/" not in name:
        return name  # already a timm source, or a timm architecture with its pretrained tag
    return f"hf-hub:{name}"


def _load_timm_vision(name: str):
    """timm's CLIP image tower; its head is the CLIP visual projection, so its output is the image embedding."""
    import timm

    model = timm.create_model(_timm_model_name(name), pretrained=True)
    config = model.pretrained_cfg
    crop_size = config["input_size"][-1]
    preprocessing = ClipImagePreprocessing(
        resize_shortest_edge=int(crop_size / config.get("crop_pct", 1.0)),
        crop_size=crop_size,
        mean=tuple(config.get("mean", OPENAI_CLIP_MEAN)),
        std=tuple(config.get("std", OPENAI_CLIP_STD)),
    )
    feature_dim = model.num_classes or model.num_features
    return model, model, preprocessing, feature_dim


class ClipImageEncoder:
    """CLIP image embedding of each clip: the mean of the embeddings of its `frames_per_clip` sampled frames.

    Args:
        model_name_or_path: Hub id or local folder; default `openai/clip-vit-base-patch32` (transformers) or
            `timm/vit_base_patch32_clip_224.openai` (timm).
        backend: "transformers" (CLIPVisionModelWithProjection) or "timm".
        frames_per_clip: frames sampled per clip (1, at the clip centre, as the official features).
        batch_size: frames per forward pass.
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
        dtype: what the model computes in: "float32" (default), "bfloat16", "float16" (CUDA only), "auto"
            (bf16 where the CPU or GPU has bf16 units, see `precision.py`), or a torch dtype. The weights are cast to
            it; the features come back in fp32.
        revision: Hub revision (transformers backend).
    """

    name = "clip"

    def __init__(
        self,
        model_name_or_path: str | None = None,
        backend: str = "transformers",
        frames_per_clip: int = 1,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        revision: str | None = None,
    ):
        if backend not in IMAGE_BACKENDS:
            raise ValueError(f"backend must be one of {IMAGE_BACKENDS}, got {backend!r}")
        if frames_per_clip < 1 or batch_size < 1:
            raise ValueError(f"frames_per_clip and batch_size must be >= 1, got {frames_per_clip}, {batch_size}")
        if revision is not None and backend == "timm":
            raise ValueError("revision is for the transformers backend; with timm, put it in the id: hf-hub:org/x@rev")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.frames_per_clip = frames_per_clip
        self.batch_size = batch_size
        if backend == "transformers":
            model_name_or_path = model_name_or_path or DEFAULT_CLIP_MODEL
            loaded = _load_transformers_vision(model_name_or_path, revision)
        else:
            model_name_or_path = model_name_or_path or DEFAULT_TIMM_CLIP_MODEL
            loaded = _load_timm_vision(model_name_or_path)
        model, self._embed, self.preprocessing, self.feature_dim = loaded
        self.identity = {
            "encoder": "clip-image",
            "backend": backend,
            "model": model_name_or_path,
            "weights_sha256": weights_fingerprint(model),
            "dtype": str(self.dtype),
            "frames_per_clip": frames_per_clip,
            "preprocessing": asdict(self.preprocessing),
        }
        self._model = model.eval().to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """(n, H, W, 3) uint8 RGB -> (n, feature_dim) float32 on the CPU, in batches of `batch_size` frames."""
        embeddings = []
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size])).to(self.device)
            pixel_values = self.preprocessing(batch).to(self.dtype)  # (b, 3, S, S)
            embeddings.append(self._embed(pixel_values).float().cpu())
        return torch.cat(embeddings)

    def encode_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """clips: each (frames_per_clip, H, W, 3) uint8 -> (len(clips), feature_dim) float32."""
        frames = np.concatenate(clips)  # (n * k, H, W, 3)
        embeddings = self.encode_frames(frames).view(len(clips), self.frames_per_clip, -1)
        return embeddings.mean(dim=1).numpy()


class ClipTextEncoder:
    """CLIP text features of queries: last_hidden_state (N, D) over the query's tokens, start and end token included.

    Args: as ClipImageEncoder (transformers only: timm has no CLIP text tower).
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_CLIP_MODEL,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        revision: str | None = None,
        batch_size: int = 64,
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, revision=revision)
        model = CLIPTextModel.from_pretrained(model_name_or_path, revision=revision)
        self.feature_dim = model.config.hidden_size
        # a tokenizer saved without model_max_length reports a huge one: the position table is the real limit
        self.max_length = min(self.tokenizer.model_max_length, model.config.max_position_embeddings)
        self.identity = {
            "encoder": "clip-text",
            "model": model_name_or_path,
            "weights_sha256": weights_fingerprint(model),
            "dtype": str(self.dtype),
        }
        self._model = model.eval().to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def __call__(self, queries: str | Sequence[str]) -> list[np.ndarray]:
        """One query or a list -> one (N_i, feature_dim) float32 array per query."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        if not queries:
            raise ValueError("no query given")
        for index, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"query {index} is empty or not a string: {query!r}")
        features = []
        for start in range(0, len(queries), self.batch_size):
            tokens = self.tokenizer(
                queries[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self._model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
            # CLIP's text attention is causal, so the padding after a query does not change its tokens' states
            for states, length in zip(hidden.float().cpu(), tokens.attention_mask.sum(dim=1).tolist()):
                features.append(states[:length].numpy())
        return features
