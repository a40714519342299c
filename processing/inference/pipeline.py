"""The `video-moment-retrieval` pipeline: a video file and text queries -> moments in seconds and clip saliency.

    import processing.inference.pipeline  # registers the task with transformers
    from transformers import pipeline

    pipe = pipeline("video-moment-retrieval", model="a-folder-or-hub-id")
    pipe(video="x.mp4", query="a man throws a ball", top_k=5)
    # {"query": "a man throws a ball", "moments": [{"start": 8.0, "end": 12.0, "score": 0.91}, ...],
    #  "saliency": [one score per clip], "clip_length": 2.0, "duration": 20.0}

The model folder (or Hub repository) holds the LD-DETR model and its processor (`processor_config.json`: feature
dims, clip length, maximum clips, the preprocessing of training). The pipeline computes the features itself, with the
CLIP models named, in this order of precedence, by the pipeline's arguments (`clip_model`, `clip_text_model`,
`clip_backend`, `frames_per_clip`), by `clip_feature_models.json` beside the model (written by `save_pretrained`),
or by the defaults (`openai/clip-vit-base-patch32` for images and text, one frame per clip). Checkpoints trained on
SlowFast + CLIP features (the official ones) need a SlowFast encoder (`slowfast=`, a
`processing.video.featurizer.CallableClipEncoder`); without one the pipeline refuses them with a clear error.

Long videos are handled with sliding windows (`processing.inference.sliding_windows`): a video of more clips than
the model was trained on (the smaller of the processor's and the config's `max_video_clips`, 75 for QVHighlights)
is cut into windows of exactly that many clips overlapping by `window_overlap` (a fraction of a window, default one
half); the moments of all windows are mapped back to seconds of the whole video and merged by temporal NMS (at
`nms_threshold`, or 0.7 when none is given, since overlapping windows find the same moment twice), and the saliency of
a clip is averaged over the windows that contain it. A video that fits is one window, exactly as in training.

Precision (`torch_dtype=`, or transformers' `dtype=`): "auto" (the default) computes in bf16 where the CPU or GPU
has bf16 units and in fp32 elsewhere (`processing.video.precision`); "float32", "bfloat16" or "float16" (CUDA)
force one. CLIP (image and text) runs with its weights in that dtype; LD-DETR keeps fp32 weights and runs under
autocast to it, as in bf16 training (its anchors and sine encodings stay fp32; a dtype named to `pipeline()` also
makes transformers load the weights in it, so they come back to fp32 rounded to it). Cached video features are keyed
on the dtype they were computed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import cached_file

# importing modeling_lddetr registers the LD-DETR classes with AutoProcessor, which pipeline() loads through
from modeling_lddetr import LDDetrFeatureExtractor, LDDetrModel, LDDetrProcessor

from ..video.clip_encoders import DEFAULT_CLIP_MODEL, IMAGE_BACKENDS, ClipTextEncoder
from ..video.featurizer import ClipEncoder, VideoFeaturizer
from ..video.precision import resolve_dtype
from .sliding_windows import average_saliency, merge_moments, plan_windows

TASK = "video-moment-retrieval"
CLIP_FEATURE_MODELS_FILE = "clip_feature_models.json"
DEFAULT_TOP_K = 10
# overlapping windows see the same moment twice; without a user threshold, NMS at this IoU keeps the best copy
WINDOW_MERGE_NMS_THRESHOLD = 0.7


@dataclass(frozen=True)
class ClipFeatureModels:
    """The CLIP models that make a checkpoint's features, saved beside it as `clip_feature_models.json`."""

    image_model: str = DEFAULT_CLIP_MODEL
    text_model: str = DEFAULT_CLIP_MODEL
    image_backend: str = "transformers"
    frames_per_clip: int = 1

    @classmethod
    def beside_model(cls, name_or_path: str) -> ClipFeatureModels | None:
        """The file saved with a model (a folder or a Hub id), or None when it has none."""
        if not name_or_path:
            return None
        path = cached_file(
            name_or_path,
            CLIP_FEATURE_MODELS_FILE,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        if path is None:
            return None
        with open(path, encoding="utf-8") as file:
            settings = json.load(file)
        known = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(settings, dict) or not set(settings) <= known:
            raise ValueError(f"{path}: expected a JSON object with keys among {sorted(known)}, got {settings!r}")
        return cls(**settings)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / CLIP_FEATURE_MODELS_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")
        return path


class VideoMomentRetrievalPipeline(Pipeline):
    """Moments and per-clip saliency of a video for text queries; see the module docstring.

    Args (besides the `Pipeline` ones: model, processor, device):
        clip_model: CLIP model (Hub id or folder) for the image and text features.
        clip_text_model: another model for the text features (e.g. when `clip_backend="timm"`).
        clip_backend: "transformers" or "timm" for the image model.
        frames_per_clip: frames sampled per clip and averaged.
        slowfast: a SlowFast clip encoder, put before CLIP, for checkpoints trained on SlowFast + CLIP features.
        video_featurizer / text_encoder: a ready-made `VideoFeaturizer` and text encoder, instead of the CLIP arguments
            above.
        cache_dir / use_cache: the on-disk cache of video features, under `features/` of the lddetr cache folder
            (default $LDDETR_CACHE, else ~/.cache/lddetr), so that a video is decoded once across calls.
        window_overlap: overlap of consecutive windows on long videos, as a fraction of a window, in [0, 1).
        windows_per_batch: (query, window) pairs per model forward.
        torch_dtype: "auto" (default: bf16 where the hardware has bf16 units, else fp32), "float32", "bfloat16",
            "float16" (CUDA only) or a torch dtype: what CLIP and LD-DETR compute in (see the module docstring).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(
        self,
        *args,
        clip_model: str | None = None,
        clip_text_model: str | None = None,
        clip_backend: str | None = None,
        frames_per_clip: int | None = None,
        slowfast: ClipEncoder | None = None,
        video_featurizer: VideoFeaturizer | None = None,
        text_encoder: ClipTextEncoder | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        window_overlap: float = 0.5,
        windows_per_batch: int = 32,
        torch_dtype: str | torch.dtype | None = None,
        **kwargs,
    ):
        # pipeline() passes its `dtype` (default "auto") on; either spelling means the same here
        requested_dtype = torch_dtype if torch_dtype is not None else kwargs.pop("dtype", None)
        super().__init__(*args, **kwargs)
        if not isinstance(self.processor, LDDetrProcessor):
            raise ValueError(
                f"the {TASK} pipeline needs the model's LDDetrProcessor (got {type(self.processor).__name__}): save it "
                "beside the model with processor.save_pretrained(folder), or pass processor=LDDetrProcessor(...)"
            )
        if not 0 <= window_overlap < 1:
            raise ValueError(f"window_overlap must be in [0, 1), got {window_overlap}")
        if windows_per_batch < 1:
            raise ValueError(f"windows_per_batch must be >= 1, got {windows_per_batch}")
        self.model.eval()  # a model in training mode would update its momentum encoders and queues on every call
        self.compute_dtype = resolve_dtype(requested_dtype, self.device)
        # LD-DETR's fp32 parts (anchors, sine encodings) need fp32 weights: autocast, not a cast, gives it the dtype
        self.model.float()
        self.window_overlap = window_overlap
        self.windows_per_batch = windows_per_batch
        settings = self.processor.feature_extractor
        self._check_processor_fits_model(settings)

        if video_featurizer is None or text_encoder is None:
            models = ClipFeatureModels.beside_model(self.model.name_or_path) or ClipFeatureModels()
            chosen = dict(image_model=clip_model, text_model=clip_text_model or clip_model)
            chosen.update(image_backend=clip_backend, frames_per_clip=frames_per_clip)
            models = dataclasses.replace(models, **{name: value for name, value in chosen.items() if value is not None})
            if models.image_backend not in IMAGE_BACKENDS:
                raise ValueError(f"clip_backend must be one of {IMAGE_BACKENDS}, got {models.image_backend!r}")
        # what save_pretrained can write down: nothing when a ready-made featurizer or encoder was passed
        named = video_featurizer is None and text_encoder is None
        self.clip_feature_models = models if named else None
        if video_featurizer is None:
            video_featurizer = VideoFeaturizer.from_clip(
                models.image_model,
                backend=models.image_backend,
                clip_length=settings.clip_length,
                frames_per_clip=models.frames_per_clip,
                device=self.device,
                dtype=self.compute_dtype,
                cache_dir=cache_dir,
                use_cache=use_cache,
                slowfast=slowfast,
            )
        if text_encoder is None:
            text_encoder = ClipTextEncoder(models.text_model, device=self.device, dtype=self.compute_dtype)
        self.video_featurizer = video_featurizer
        self.text_encoder = text_encoder
        self._check_encoders_fit_processor(settings)

    # ------------------------------------------------------------------------------------------- compatibility

    def _check_processor_fits_model(self, settings: LDDetrFeatureExtractor) -> None:
        config = self.model.config
        if settings.audio_feature_dim:
            raise ValueError(
                f"this checkpoint takes audio features ({settings.audio_feature_dim} dims), which the {TASK} pipeline "
                "cannot extract from a video file: use a checkpoint trained without audio"
            )
        if settings.model_video_feature_dim != config.video_feature_dim:
            raise ValueError(
                f"the processor gives {settings.model_video_feature_dim} video dims (video_feature_dims "
                f"{settings.video_feature_dims}, use_tef={settings.use_tef}) but the model takes "
                f"{config.video_feature_dim}: the processor saved beside the model does not belong to it"
            )
        if settings.text_feature_dim != config.text_feature_dim:
            raise ValueError(
                f"the processor gives {settings.text_feature_dim} text dims but the model takes "
                f"{config.text_feature_dim}: the processor saved beside the model does not belong to it"
            )

    def _check_encoders_fit_processor(self, settings: LDDetrFeatureExtractor) -> None:
        # explains a missing SlowFast encoder, or a CLIP model of another width than the checkpoint's features
        self.video_featurizer.check_feature_dims(settings.video_feature_dims)
        if self.video_featurizer.clip_length != settings.clip_length:
            raise ValueError(
                f"the video featurizer cuts {self.video_featurizer.clip_length:g}-s clips but the model "
                f"was trained on {settings.clip_length:g}-s clips"
            )
        if self.text_encoder.feature_dim != settings.text_feature_dim:
            raise ValueError(
                f"the text encoder gives {self.text_encoder.feature_dim}-d token features but the model takes "
                f"{settings.text_feature_dim}: use the CLIP text model the checkpoint was trained with"
            )

    @property
    def max_window_clips(self) -> int | None:
        """Most clips the model sees at once: the smaller of the processor's and the config's limits (None: none)."""
        limits = [self.processor.feature_extractor.max_video_clips, self.model.config.max_video_clips]
        limits = [int(limit) for limit in limits if limit is not None]
        return min(limits) if limits else None

    # ---------------------------------------------------------------------------------------------------- call

    def __call__(self, video: str | os.PathLike | None = None, query: str | list[str] | None = None, **kwargs):
        """
        Args:
            video: path of one video file.
            query: one query (returns one dict) or a list of queries (returns a list of dicts, one per query); the
                video's features are extracted once for all of them.
            top_k: moments per query (default 10).
            nms_threshold: drop moments whose IoU with a better one exceeds it (default: none for a video that fits
                the model, 0.7 across sliding windows).
            progress: show a progress bar over the video's clips while extracting features.

        Returns:
            per query `{"query", "moments": [{"start", "end", "score"}, ...] best first (seconds),
            "saliency": [one score per clip], "clip_length", "duration"}`.
        """
        if video is None or query is None:
            raise ValueError(f"the {TASK} pipeline needs a video and a query: pipe(video='x.mp4', query='...')")
        if not isinstance(video, (str, os.PathLike)):
            raise ValueError(f"video must be the path of one video file, got {type(video).__name__}")
        queries = [query] if isinstance(query, str) else list(query)
        results = super().__call__({"video": os.fspath(video), "queries": queries}, **kwargs)
        return results[0] if isinstance(query, str) else results

    def _sanitize_parameters(self, top_k=None, nms_threshold=None, progress=None):
        preprocess, postprocess = {}, {}
        if progress is not None:
            preprocess["progress"] = bool(progress)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
            postprocess["top_k"] = top_k
        if nms_threshold is not None:
            if not 0 <= nms_threshold <= 1:
                raise ValueError(f"nms_threshold must be in [0, 1], got {nms_threshold}")
            postprocess["nms_threshold"] = float(nms_threshold)
        return preprocess, {}, postprocess

    def preprocess(self, inputs: dict, progress: bool = False) -> dict:
        # queries first: a bad query fails before a long video is decoded
        text_features = self.text_encoder(inputs["queries"])
        video = self.video_featurizer(inputs["video"], progress=progress)
        window_clips = self.max_window_clips or video.num_clips
        overlap_clips = min(int(window_clips * self.window_overlap), window_clips - 1)
        windows = plan_windows(video.num_clips, video.duration, video.clip_length, window_clips, overlap_clips)
        return {
            "video_features": video.concatenated(),
            "text_features": text_features,
            "windows": windows,
            "queries": inputs["queries"],
            "duration": video.duration,
            "clip_length": video.clip_length,
            "num_clips": video.num_clips,
        }

    def _forward(self, model_inputs: dict) -> dict:
        video, windows = model_inputs["video_features"], model_inputs["windows"]
        # query-major: pair i is query i // len(windows) on window i % len(windows)
        pairs = [(text, window) for text in model_inputs["text_features"] for window in windows]
        outputs = {"logits": [], "pred_spans": [], "saliency_scores": [], "video_attention_mask": []}
        for first in range(0, len(pairs), self.windows_per_batch):
            chunk = pairs[first : first + self.windows_per_batch]
            batch = self.processor(
                video_features=[video[window.start : window.stop] for _, window in chunk],
                text_features=[text for text, _ in chunk],
                return_tensors="pt",
            )
            with self._autocast():
                result = self.model(**{name: self._on_model(tensor) for name, tensor in batch.items()})
            for name in ("logits", "pred_spans", "saliency_scores"):
                outputs[name].append(getattr(result, name).float())
            outputs["video_attention_mask"].append(batch["video_attention_mask"])
        # every window has the same number of clips, so the chunks concatenate without padding
        outputs = {name: torch.cat(parts) for name, parts in outputs.items()}
        metadata = ("windows", "queries", "duration", "clip_length", "num_clips")
        return {**outputs, **{name: model_inputs[name] for name in metadata}}

    def _on_model(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.to(self.device, dtype=self.model.dtype)
        return tensor.to(self.device)

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def postprocess(
        self, model_outputs: dict, top_k: int = DEFAULT_TOP_K, nms_threshold: float | None = None
    ) -> list[dict]:
        windows, queries = model_outputs["windows"], model_outputs["queries"]
        records = self.processor.post_process(
            model_outputs,
            model_outputs["video_attention_mask"],
            durations=[window.duration for window in windows] * len(queries),
            top_k=None,  # all of each window's moments: the best ones overall are chosen after merging
        )
        if nms_threshold is None and len(windows) > 1:
            nms_threshold = WINDOW_MERGE_NMS_THRESHOLD
        num_clips = model_outputs["num_clips"]
        results = []
        for index, query in enumerate(queries):
            per_window = records[index * len(windows) : (index + 1) * len(windows)]
            moments = merge_moments(windows, [r["pred_relevant_windows"] for r in per_window], nms_threshold, top_k)
            saliency = average_saliency(windows, [r["pred_saliency_scores"] for r in per_window], num_clips)
            results.append(
                {
                    "query": query,
                    "moments": [{"start": start, "end": end, "score": score} for start, end, score in moments],
                    "saliency": saliency,
                    "clip_length": model_outputs["clip_length"],
                    "duration": round(model_outputs["duration"], 4),
                }
            )
        return results

    # ---------------------------------------------------------------------------------------------------- save

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the model, its processor and the CLIP model names, so that `pipeline(TASK, model=folder)` rebuilds
        this pipeline (a ready-made featurizer or text encoder passed as an argument cannot be named, and must be
        passed again)."""
        os.makedirs(save_directory, exist_ok=True)
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
        if self.clip_feature_models is not None:
            self.clip_feature_models.save(save_directory)


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=VideoMomentRetrievalPipeline, pt_model=LDDetrModel, type="multimodal"
)
