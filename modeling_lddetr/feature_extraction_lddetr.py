"""LDDetrFeatureExtractor: pre-computed clip and token features -> LD-DETR model inputs (and labels).

It reproduces the data pipeline of the official LD-DETR code (`StartEndDataset`, `start_end_collate`):
- each video feature type (a block of `video_feature_dims` columns, e.g. SlowFast then CLIP), the audio and the text
  features are L2-normalised row by row, `x / (||x|| + 1e-5)`, each type on its own;
- videos are cut to `max_video_clips` rows (and to the audio length when audio is given), queries to
  `max_text_tokens` tokens;
- the temporal endpoint feature `[i / L, (i + 1) / L]` of clip i of L is appended to the video (and to the audio,
  as the official audio dataset does, so it reaches the model twice);
- the batch is zero-padded to its longest video and query, with masks (1 = valid);

Training labels (when annotations are given) come from `labels_lddetr.py`, which lists where they differ from the
official code. Malformed input raises a ValueError naming the sample, instead of failing later or training on NaN.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin

from .labels_lddetr import EVEN_PAIR_TYPES, OFFICIAL_SALIENCY_PAIRS, SALIENCY_LABEL_TYPES, LabelMaker, numpy_generator


class LDDetrFeatureExtractor(FeatureExtractionMixin):
    r"""
    Args:
        video_feature_dims: widths of the video feature types, in the order they are concatenated ([2304, 512] =
            SlowFast then CLIP). Each type is normalised on its own.
        text_feature_dim: width of the token features (512 for CLIP).
        audio_feature_dim: width of the audio features (2048 for PANN); 0 = no audio.
        max_video_clips: clips kept per video (75 for QVHighlights); None keeps every clip.
        max_text_tokens: tokens kept per query (32); None keeps every token.
        clip_length: seconds per clip (2 for QVHighlights and TACoS, 1 for Charades-STA).
        use_tef: append the 2 temporal endpoint columns to the video (and audio) features.
        max_windows: moment windows kept per query (a random subset when there are more).
        saliency_label_type: "qvhighlights" (annotator scores per clip), "binary" (Charades-STA, TACoS and any
            windows-only annotations: 1 inside the windows), "tvsum", or "mixed" (each row by its own fields:
            "qvhighlights" where it has clip scores, "binary" where it has windows only); see `labels_lddetr.py`.
        num_saliency_pairs: positive/negative clip pairs per sample (the length of `saliency_pos_indices`);
            None = the official number (2, 2, 1, 2 for the four label types). Must be even for "qvhighlights" and
            "mixed" (half hard, half easy pairs).
        normalize_features: L2-normalise the features row by row (the official pipeline does).
        normalization_eps: the epsilon of that normalisation, `x / (||x|| + eps)`.
    """

    model_input_names = ["video_features", "video_attention_mask", "text_features", "text_attention_mask"]

    def __init__(
        self,
        video_feature_dims: Sequence[int] = (2304, 512),
        text_feature_dim: int = 512,
        audio_feature_dim: int = 0,
        max_video_clips: int | None = 75,
        max_text_tokens: int | None = 32,
        clip_length: float = 2.0,
        use_tef: bool = True,
        max_windows: int = 5,
        saliency_label_type: str = "qvhighlights",
        num_saliency_pairs: int | None = None,
        normalize_features: bool = True,
        normalization_eps: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.video_feature_dims = [int(d) for d in video_feature_dims]
        self.text_feature_dim = int(text_feature_dim)
        self.audio_feature_dim = int(audio_feature_dim)
        self.max_video_clips = max_video_clips
        self.max_text_tokens = max_text_tokens
        self.clip_length = float(clip_length)
        self.use_tef = bool(use_tef)
        self.max_windows = int(max_windows)
        self.saliency_label_type = saliency_label_type
        self.num_saliency_pairs = num_saliency_pairs
        self.normalize_features = bool(normalize_features)
        self.normalization_eps = float(normalization_eps)
        self._check_settings()

    def _check_settings(self) -> None:
        if not self.video_feature_dims or min(self.video_feature_dims) < 1:
            raise ValueError(
                f"video_feature_dims must be a non-empty list of positive widths, got {self.video_feature_dims}"
            )
        if self.text_feature_dim < 1:
            raise ValueError(f"text_feature_dim must be positive, got {self.text_feature_dim}")
        if self.audio_feature_dim < 0:
            raise ValueError(f"audio_feature_dim must be >= 0 (0 = no audio), got {self.audio_feature_dim}")
        for name in ("max_video_clips", "max_text_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None (no limit), got {value!r}")
        if not self.clip_length > 0:
            raise ValueError(f"clip_length must be positive, got {self.clip_length}")
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")
        if self.saliency_label_type not in SALIENCY_LABEL_TYPES:
            raise ValueError(
                f"saliency_label_type must be one of {SALIENCY_LABEL_TYPES}, got {self.saliency_label_type!r}"
            )
        pairs = self.saliency_pairs
        if pairs < 1 or (self.saliency_label_type in EVEN_PAIR_TYPES and pairs % 2):
            raise ValueError(
                "num_saliency_pairs must be >= 1 (and even for qvhighlights and mixed: half hard, half easy pairs), "
                f"got {pairs}"
            )

    @property
    def saliency_pairs(self) -> int:
        """Positive/negative clip pairs per sample: the setting, or the official number for the label type."""
        if self.num_saliency_pairs is None:
            return OFFICIAL_SALIENCY_PAIRS[self.saliency_label_type]
        return int(self.num_saliency_pairs)

    @property
    def model_video_feature_dim(self) -> int:
        """Width of the video features the model receives (tef columns included): `LDDetrConfig.video_feature_dim`."""
        return sum(self.video_feature_dims) + (2 if self.use_tef else 0)

    @property
    def model_audio_feature_dim(self) -> int:
        """Width of the audio features the model receives: `LDDetrConfig.audio_feature_dim` (0 = no audio)."""
        return self.audio_feature_dim + (2 if self.use_tef else 0) if self.audio_feature_dim else 0

    def __call__(
        self,
        video_features: Sequence,
        text_features: Sequence,
        annotations: Sequence[Mapping] | None = None,
        audio_features: Sequence | None = None,
        return_tensors: str | None = "pt",
        seed: int | None = None,
        generator: np.random.Generator | torch.Generator | None = None,
    ) -> BatchFeature:
        """
        Args:
            video_features: per sample a (clips, sum(video_feature_dims)) matrix (numpy, torch or nested lists), raw.
            text_features: per sample a (tokens, text_feature_dim) matrix, raw.
            annotations: per sample a dict in the official jsonl format (`duration`, `relevant_windows`, and
                `relevant_clip_ids` + `saliency_scores` for QVHighlights, `label` or `saliency_scores` (clips,
                annotators) for TVSum). Labels are made when every sample has them; samples without (a test split)
                make no labels.
            audio_features: per sample a (clips, audio_feature_dim) matrix; required iff audio_feature_dim > 0.
            return_tensors: "pt" (torch) or "np" (numpy).
            seed / generator: randomness of the labels (easy saliency pairs, window subsets). A numpy or torch
                generator is used as given; a seed makes a fresh numpy generator; neither draws a seed from torch's
                global generator (seeded by `transformers.set_seed`). `LDDetrDataCollator` seeds each batch from its
                rows instead, so that resumed training runs repeat exactly.

        Returns:
            BatchFeature with `video_features` (B, L, Dv) float32, `video_attention_mask` (B, L) int64,
            `text_features` (B, N, Dt), `text_attention_mask` (B, N), `audio_features` (B, L, Da) when audio is used,
            and `labels`: a list of B dicts with `spans` (n, 2) float32 (center, width), `saliency_scores` (L_b,)
            float32, `saliency_pos_indices` and `saliency_neg_indices` (k,) int64.
        """
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        batch_size = len(video_features)
        if batch_size == 0:
            raise ValueError("the batch is empty: no video features given")
        for name, values in (
            ("text_features", text_features),
            ("annotations", annotations),
            ("audio_features", audio_features),
        ):
            if values is not None and len(values) != batch_size:
                raise ValueError(
                    f"{len(video_features)} video_features but {len(values)} {name}: one per sample is needed"
                )
        if self.audio_feature_dim and audio_features is None:
            raise ValueError(f"audio_feature_dim is {self.audio_feature_dim}: audio_features are required")
        if not self.audio_feature_dim and audio_features is not None:
            raise ValueError("audio_features given, but audio_feature_dim is 0 (no audio)")

        videos, audios, texts, clips_before_cut = [], [], [], []
        for index in range(batch_size):
            video = self._video_matrix(video_features[index], index)
            audio = None if audio_features is None else self._audio_matrix(audio_features[index], index)
            length = len(video) if audio is None else min(len(video), len(audio))
            clips_before_cut.append(length)
            if self.max_video_clips is not None:
                length = min(length, self.max_video_clips)
            videos.append(self._with_tef(video[:length]))
            if audio is not None:
                audios.append(self._with_tef(audio[:length]))
            texts.append(self._text_matrix(text_features[index], index))

        video, video_mask = pad_matrices(videos)
        text, text_mask = pad_matrices(texts)
        data = {
            "video_features": video,
            "video_attention_mask": video_mask,
            "text_features": text,
            "text_attention_mask": text_mask,
        }
        if audios:
            data["audio_features"] = pad_matrices(audios)[0]
        if annotations is not None:
            kept_clips = [len(v) for v in videos]
            make_labels = LabelMaker(self.saliency_label_type, self.saliency_pairs, self.clip_length, self.max_windows)
            labels = make_labels(annotations, kept_clips, clips_before_cut, numpy_generator(seed, generator))
            if labels is not None:
                data["labels"] = labels
        if return_tensors == "pt":
            data = {key: _to_torch(value) for key, value in data.items()}
        return BatchFeature(data)

    def _video_matrix(self, features, index: int) -> np.ndarray:
        """(clips, sum(video_feature_dims)), each feature type normalised on its own."""
        width = sum(self.video_feature_dims)
        matrix = as_feature_matrix(
            features,
            "video_features",
            index,
            "a video shorter than one clip",
            width,
            f"sum(video_feature_dims) = {width} ({self.video_feature_dims})",
        )
        if not self.normalize_features:
            return matrix
        blocks = np.split(matrix, np.cumsum(self.video_feature_dims)[:-1], axis=1)
        return np.concatenate([l2_normalize_rows(block, self.normalization_eps) for block in blocks], axis=1)

    def _audio_matrix(self, features, index: int) -> np.ndarray:
        matrix = as_feature_matrix(
            features,
            "audio_features",
            index,
            "audio shorter than one clip",
            self.audio_feature_dim,
            f"audio_feature_dim = {self.audio_feature_dim}",
        )
        return l2_normalize_rows(matrix, self.normalization_eps) if self.normalize_features else matrix

    def _text_matrix(self, features, index: int) -> np.ndarray:
        matrix = as_feature_matrix(
            features,
            "text_features",
            index,
            "a query with no tokens",
            self.text_feature_dim,
            f"text_feature_dim = {self.text_feature_dim}",
        )
        matrix = matrix[: self.max_text_tokens]
        return l2_normalize_rows(matrix, self.normalization_eps) if self.normalize_features else matrix

    def _with_tef(self, matrix: np.ndarray) -> np.ndarray:
        """(L, D) -> (L, D + 2): clip i gets [i / L, (i + 1) / L], computed in float32 as the official code does."""
        if not self.use_tef:
            return matrix
        length = len(matrix)
        start = np.arange(length, dtype=np.float32) / np.float32(length)
        tef = np.stack([start, start + np.float32(1.0 / length)], axis=1)
        return np.concatenate([matrix, tef], axis=1)


# ---------------------------------------------------------------------------------------------------- helpers


def as_feature_matrix(features, name: str, index: int, empty_meaning: str, width: int, expected: str) -> np.ndarray:
    """A (rows, width) float32 numpy matrix from a numpy array, torch tensor or nested list, checked (`expected`
    names the setting the width comes from, for the error)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    try:
        matrix = np.asarray(features, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sample {index}: {name} are not a numeric (rows, width) matrix ({error})") from None
    if matrix.size == 0:
        raise ValueError(f"sample {index}: {name} have no rows ({empty_meaning})")
    if matrix.ndim != 2:
        raise ValueError(f"sample {index}: {name} must be a (rows, width) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"sample {index}: {name} contain NaN or inf")
    if matrix.shape[1] != width:
        raise ValueError(f"sample {index}: {name} have width {matrix.shape[1]}, expected {expected}")
    return matrix


def l2_normalize_rows(matrix: np.ndarray, eps: float) -> np.ndarray:
    """x / (||x|| + eps) per row: the official `l2_normalize_np_array`."""
    return matrix / (np.linalg.norm(matrix, axis=-1, keepdims=True) + np.float32(eps))


def pad_matrices(matrices: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """B matrices (L_b, D) -> zero-padded (B, max L_b, D) float32 and the (B, max L_b) int64 mask (1 = valid row)."""
    longest = max(len(m) for m in matrices)
    padded = np.zeros((len(matrices), longest, matrices[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(matrices), longest), dtype=np.int64)
    for row, matrix in enumerate(matrices):
        padded[row, : len(matrix)] = matrix
        mask[row, : len(matrix)] = 1
    return padded, mask


def _to_torch(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, list):
        return [{key: torch.from_numpy(array) for key, array in item.items()} for item in value]
    return value


__all__ = ["LDDetrFeatureExtractor"]
