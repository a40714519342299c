"""Stage-1 embeddings: one unit vector per video and per query, compared by a dot product.

"distill-align" (the default): the global features Distill Align contrasts in training, from the model's own
unimodal encoders: the L2-normalised mean of `video_encoder` over a video's clips, and of `text_encoder` over a
query's tokens. The model learns exactly this video-text similarity (its contrastive loss), at no extra cost. A
video longer than the model's clip limit is embedded window by window, as stage 2 sees it, and its embedding is the
normalised mean of its windows'.

"clip-max" (the comparison): the query's CLIP text embedding against every clip's CLIP image embedding, the video
scored by its best clip. It needs the library's CLIP columns and a query embedding in the same space: CLIP's
projected text embedding for libraries built from video files, or, for features that put text tokens in the clip
space (the demo's synthetic ones), the mean of the query's token features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeling_lddetr import LDDetrModel, LDDetrProcessor
from processing.inference.sliding_windows import plan_windows
from processing.video.clip_encoders import weights_fingerprint

EMBEDDINGS = ("distill-align", "clip-max")
EMBED_BATCH = 64  # windows per forward of the video encoder


def encoders_fingerprint(model: LDDetrModel) -> str:
    """sha256 of what makes the embeddings: the two unimodal encoders (not the whole state, whose Distill Align
    queues a loaded model draws afresh)."""
    return weights_fingerprint(nn.ModuleDict({"video": model.video_encoder, "text": model.text_encoder}))


def masked_mean_unit(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, d), (B, S) -> (B, d): the L2-normalised mean over the valid positions (Distill Align's global
    feature)."""
    weights = mask.to(states.dtype)[..., None]
    return F.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)


class DistillAlignEmbedder:
    """The model's Distill Align global features for videos (raw clip features) and queries (raw token features)."""

    def __init__(self, model: LDDetrModel, processor: LDDetrProcessor, window_overlap: float = 0.5):
        self.model, self.processor = model.eval(), processor
        self.window_clips = int(model.config.max_video_clips or processor.feature_extractor.max_video_clips)
        self.window_overlap = window_overlap
        self.text_dim = processor.feature_extractor.text_feature_dim
        self.dim = model.config.hidden_size

    def windows(self, num_clips: int, duration: float):
        overlap = min(int(self.window_clips * self.window_overlap), self.window_clips - 1)
        clip_length = self.processor.feature_extractor.clip_length
        return plan_windows(num_clips, duration, clip_length, self.window_clips, overlap)  # short: one window

    @torch.no_grad()
    def videos(self, features: Sequence[np.ndarray], durations: Sequence[float]) -> np.ndarray:
        """Raw (L_i, D) clip features -> (V, d) float32 unit embeddings."""
        pieces, owner = [], []
        for index, (matrix, duration) in enumerate(zip(features, durations)):
            for window in self.windows(len(matrix), duration):
                pieces.append(matrix[window.start : window.stop])
                owner.append(index)
        sums = torch.zeros(len(features), self.dim)
        placeholder = np.ones((1, self.text_dim), np.float32)  # the processor batches a query with every video
        for first in range(0, len(pieces), EMBED_BATCH):
            chunk = pieces[first : first + EMBED_BATCH]
            batch = self.processor(video_features=chunk, text_features=[placeholder] * len(chunk))
            states = self.model.video_encoder(batch["video_features"].to(self.model.dtype)).float()
            unit = masked_mean_unit(states, batch["video_attention_mask"].bool())
            sums.index_add_(0, torch.tensor(owner[first : first + EMBED_BATCH]), unit)
        return F.normalize(sums, dim=-1).numpy()

    @torch.no_grad()
    def queries(self, text_features: Sequence[np.ndarray]) -> np.ndarray:
        """Raw (N_i, Dt) token features -> (Q, d) float32 unit embeddings."""
        placeholder = np.ones((1, sum(self.processor.feature_extractor.video_feature_dims)), np.float32)
        batch = self.processor(video_features=[placeholder] * len(text_features), text_features=list(text_features))
        states = self.model.text_encoder(batch["text_features"].to(self.model.dtype)).float()
        return masked_mean_unit(states, batch["text_attention_mask"].bool()).numpy()

    @torch.no_grad()
    def clip_similarities(self, video_features: np.ndarray, query: np.ndarray) -> np.ndarray:
        """(L, D) raw clip features of one video, (d,) unit query embedding -> (L,) cosine of each clip's
        `video_encoder` state with the query: where in the video the stage-1 similarity comes from."""
        batch = self.processor(video_features=[video_features], text_features=[np.ones((1, self.text_dim), np.float32)])
        states = F.normalize(self.model.video_encoder(batch["video_features"].to(self.model.dtype)).float()[0], dim=-1)
        return (states @ torch.from_numpy(query)).numpy()

    def temperature(self) -> float:
        """Distill Align's learned temperature: the similarity's scale in the model's own contrastive softmax."""
        return float(self.model.distill_align.temperature.detach().clamp(0.001, 0.5))


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def clip_max_scores(clip_embeddings: Sequence[np.ndarray], query: np.ndarray) -> np.ndarray:
    """Per video, the best cosine of its clips' CLIP image embeddings (L_i, Dc) with a (Dc,) query embedding."""
    query = unit_rows(query[None])[0]
    return np.array([float((unit_rows(clips) @ query).max()) for clips in clip_embeddings], dtype=np.float32)
