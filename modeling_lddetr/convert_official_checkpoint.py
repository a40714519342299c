"""Convert an official LD-DETR checkpoint (`model_best.ckpt` of qingchen239/ld-detr) to a Hugging Face folder.

    lddetr-convert --checkpoint model_best.ckpt --output-dir lddetr-qvhighlights

The config comes from the checkpoint's training options (`opt`) and its tensor shapes. Converted models reproduce
the official release: one decoder pass (the official Loop Decoder returns inside its loop) and the official
highlight-head slicing. The Distill Align queues are kept (use `--no-queues` for an inference-only folder). The
processor settings the checkpoint was trained with (feature types and dims, clip length, truncation, tef, label
type) are written beside the model, so that `LDDetrProcessor.from_pretrained(folder)` prepares inputs as it did.
"""

import argparse
import pickle
import re
from argparse import Namespace
from pathlib import Path

import torch

from .configuration_lddetr import LDDetrConfig
from .dataset_types import DATASET_TYPES, DatasetType
from .feature_extraction_lddetr import LDDetrFeatureExtractor
from .modeling_lddetr import LDDetrModel, rename_old_key
from .processing_lddetr import LDDetrProcessor

# widths of the official feature releases, by the name of their folder (`v_feat_dirs`)
_OFFICIAL_VIDEO_FEATURE_DIMS = {"slowfast": 2304, "clip": 512}

# official layer prefix -> ours, for the three torch.nn.MultiheadAttention encoders of the fuser
_ENCODER_PREFIXES = {
    "convolutional_fuser.t2v_encoder.layers.": "convolutional_fuser.t2v_encoder.",
    "convolutional_fuser.transformer_encoder1.layers.": "convolutional_fuser.encoder1.",
    "convolutional_fuser.transformer_encoder2.layers.": "convolutional_fuser.encoder2.",
}
_ENCODER_LAYER_RENAMES = {
    "self_attn.out_proj.": "attention.out_proj.",
    "linear1.": "ffn.linear1.",
    "linear2.": "ffn.linear2.",
    "activation.": "ffn.activation.",
}
_ENCODER_LAYER_UNCHANGED = ("norm1.", "norm2.")
_PLAIN_RENAMES = [
    ("distill_align.vid_queue", "distill_align.video_queue"),
    ("distill_align.txt_queue", "distill_align.text_queue"),
    ("convolutional_fuser.v2t_extractor.weight", "convolutional_fuser.v2t_extractor.pool_weight"),
    ("convolutional_fuser.v2t_extractor.cqa_linear.", "convolutional_fuser.v2t_extractor.context_query_proj."),
    ("convolutional_fuser.v2t_extractor.conv1d.", "convolutional_fuser.v2t_extractor.pool_proj."),
    ("convolutional_fuser.convolutional_block.blocks.", "convolutional_fuser.convolutional_blocks."),
    ("query_embed.", "anchor_embed."),
    ("loop_decoder.transformer_decoder.", "loop_decoder.decoder."),
    ("prediction_heads.video_moment_retrieval_prediction_head.", "moment_retrieval_head."),
    ("prediction_heads.highlight_detection_prediction_head.", "highlight_detection_head."),
]
_UNCHANGED_PREFIXES = (
    "video_encoder.",
    "text_encoder.",
    "momentum_video_encoder.",
    "momentum_text_encoder.",
    "distill_align.",
)
_DROPPED_PREFIXES = ("txt_position_embed.",)  # built by the official model, never used


def _convert_encoder_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    for old_prefix, new_prefix in _ENCODER_PREFIXES.items():
        if not key.startswith(old_prefix):
            continue
        layer, rest = key[len(old_prefix) :].split(".", 1)
        prefix = f"{new_prefix}{layer}."
        if rest in ("self_attn.in_proj_weight", "self_attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            q, k, v = value.chunk(3, dim=0)
            return {f"{prefix}attention.{name}_proj.{kind}": part for name, part in zip("qkv", (q, k, v))}
        for old, new in _ENCODER_LAYER_RENAMES.items():
            if rest.startswith(old):
                return {prefix + new + rest[len(old) :]: value}
        if rest.startswith(_ENCODER_LAYER_UNCHANGED):
            return {prefix + rest: value}
        raise KeyError(f"unknown official encoder key: {key}")
    return None


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map official state-dict keys (and tensor layouts) to this package's, key by key.

    Works on partial state dicts. Raises KeyError for a key it does not know, so that nothing is dropped silently.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("module."):  # saved from DistributedDataParallel
            key = key[len("module.") :]
        if key.startswith(_DROPPED_PREFIXES):
            continue
        encoder_keys = _convert_encoder_key(key, value)
        if encoder_keys is not None:
            converted.update(encoder_keys)
            continue
        new_key = next((new + key[len(old) :] for old, new in _PLAIN_RENAMES if key.startswith(old)), key)
        new_key = rename_old_key(new_key)  # the official abbreviations (sa_qcontent_proj, w4C, ...) spelled out
        if new_key == key and not key.startswith(_UNCHANGED_PREFIXES):
            raise KeyError(f"unknown official LD-DETR key: {key}")
        if new_key.endswith(("context_query_proj.weight", "pool_proj.weight")):
            value = value.squeeze(-1)  # kernel-size-1 Conv1d -> Linear
        converted[new_key] = value
    return converted


def _count_layers(state_dict: dict, pattern: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def _option(opt, name, default=None):
    return getattr(opt, name, default) if isinstance(opt, Namespace) else opt.get(name, default)


def _limit(value) -> int | None:
    """The official -1 (no truncation) as None."""
    return int(value) if value is not None and int(value) > 0 else None


def config_from_official_checkpoint(checkpoint: dict) -> LDDetrConfig:
    """Build the config from the checkpoint's options (`opt`, a Namespace or a dict) and tensor shapes."""
    sd = {k.removeprefix("module."): v for k, v in checkpoint["model"].items()}
    opt = checkpoint.get("opt") or {}
    video_input_dim = sd["video_encoder.norm1.weight"].shape[0]
    audio_dim = _option(opt, "a_feat_dim") if _option(opt, "a_feat_dir") else 0
    audio_dim = int(audio_dim or 0)
    return LDDetrConfig(
        video_feature_dim=video_input_dim - audio_dim,
        text_feature_dim=sd["text_encoder.norm1.weight"].shape[0],
        audio_feature_dim=audio_dim,
        clip_length=float(_option(opt, "clip_length", 2)),
        max_video_clips=_limit(_option(opt, "max_v_l", 75)),
        max_text_tokens=_limit(_option(opt, "max_q_l", 32)),
        hidden_size=sd["video_encoder.linear1.weight"].shape[0],
        num_attention_heads=8,  # hard-coded in the official fuser and decoder
        ffn_dim=sd["loop_decoder.transformer_decoder.layers.0.linear1.weight"].shape[0],
        num_t2v_encoder_layers=_count_layers(sd, r"convolutional_fuser\.t2v_encoder\.layers\.(\d+)\."),
        num_encoder1_layers=_count_layers(sd, r"convolutional_fuser\.transformer_encoder1\.layers\.(\d+)\."),
        num_convolutional_blocks=_count_layers(sd, r"convolutional_fuser\.convolutional_block\.blocks\.(\d+)\."),
        num_encoder2_layers=_count_layers(sd, r"convolutional_fuser\.transformer_encoder2\.layers\.(\d+)\."),
        num_decoder_layers=_count_layers(sd, r"loop_decoder\.transformer_decoder\.layers\.(\d+)\."),
        num_decoder_loops=1,  # the official release makes one pass whatever num_decoder_loops says
        num_queries=sd["query_embed.weight"].shape[0],
        queue_length=sd["distill_align.vid_queue"].shape[1],
        distillation_coefficient=float(_option(opt, "distillation_coefficient", 0.4)),
        official_highlight_slicing=True,
        aux_loss=bool(_option(opt, "aux_loss", True)),
        moment_retrieval_loss=_official_dataset_type(opt).has_moment_labels,
        span_loss_coefficient=float(_option(opt, "span_loss_coef", 10)),
        giou_loss_coefficient=float(_option(opt, "giou_loss_coef", 1)),
        label_loss_coefficient=float(_option(opt, "label_loss_coef", 4)),
        align_loss_coefficient=float(_option(opt, "align_loss_coef", 0.6)),
        sim_loss_coefficient=float(_option(opt, "sim_loss_coef", 0.6)),
        saliency_loss_coefficient=float(_option(opt, "lw_saliency", 1.0)),
        matcher_class_cost=float(_option(opt, "set_cost_class", 4)),
        matcher_span_cost=float(_option(opt, "set_cost_span", 10)),
        matcher_giou_cost=float(_option(opt, "set_cost_giou", 1)),
        saliency_margin=float(_option(opt, "saliency_margin", 0.2)),
    )


def _official_dataset_type(opt) -> DatasetType:
    # a checkpoint without a known dset_name is read as QVHighlights, the dataset of the official release
    name = _option(opt, "dset_name", "hl")
    return next((t for t in DATASET_TYPES.values() if t.official_name == name), DATASET_TYPES["qvhighlights"])


def processor_from_official_checkpoint(checkpoint: dict, config: LDDetrConfig) -> LDDetrProcessor:
    """The preprocessing the checkpoint was trained with, from its options and the model's input widths."""
    opt = checkpoint.get("opt") or {}
    use_tef = "tef" in str(_option(opt, "ctx_mode", "video_tef"))
    tef = 2 if use_tef else 0
    total = config.video_feature_dim - tef
    dims = []
    for folder in _option(opt, "v_feat_dirs", None) or []:
        name = Path(str(folder).rstrip("/")).name
        dims.append(next((d for key, d in _OFFICIAL_VIDEO_FEATURE_DIMS.items() if name.startswith(key)), None))
    if not dims or None in dims or sum(dims) != total:
        # unknown feature folders: one block of the whole width (per-type normalisation cannot be recovered)
        dims = [total]
    feature_extractor = LDDetrFeatureExtractor(
        video_feature_dims=dims,
        text_feature_dim=config.text_feature_dim,
        audio_feature_dim=config.audio_feature_dim - tef if config.audio_feature_dim else 0,
        max_video_clips=config.max_video_clips,
        max_text_tokens=config.max_text_tokens,
        clip_length=config.clip_length,
        use_tef=use_tef,
        max_windows=int(_option(opt, "max_windows", 5)),
        saliency_label_type=_official_dataset_type(opt).saliency_label_type,
    )
    return LDDetrProcessor(feature_extractor)


# what an official checkpoint pickles besides tensors and plain containers: the training options ("opt") and the
# torch.device among them; torch.load(weights_only=True) refuses every other object type
OFFICIAL_CHECKPOINT_GLOBALS = [Namespace, torch.device]


def load_official_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict:
    """The checkpoint's dict, unpickled with `weights_only=True` and only `OFFICIAL_CHECKPOINT_GLOBALS` allowed
    (an arbitrary pickle can run code); `trust_checkpoint=True` unpickles anything, for files of a trusted source."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        if trust_checkpoint:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(OFFICIAL_CHECKPOINT_GLOBALS):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path)
        if not refused:
            raise ValueError(f"{path} is not a readable PyTorch checkpoint (it does not unpickle as one)") from error
        raise ValueError(
            f"{path} holds objects of types an official checkpoint does not ({', '.join(refused)}), and unpickling "
            "them could run code: pass --trust-checkpoint (trust_checkpoint=True) only if you trust its source"
        ) from error
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {reason})") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{path} is not an official LD-DETR checkpoint: expected a dict with a 'model' state dict.")
    return checkpoint


def _refused_globals(path: Path) -> list[str]:
    """The types in a checkpoint that the allowlist refuses (empty when the file cannot be inspected)."""
    allowed = {f"{kind.__module__}.{kind.__qualname__}" for kind in OFFICIAL_CHECKPOINT_GLOBALS}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip-format checkpoint: the unpickling error is all there is to say
        return []
    return sorted(set(found) - allowed)


def convert_official_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path | None = None,
    save_queues: bool = True,
    trust_checkpoint: bool = False,
) -> LDDetrModel:
    """Load an official checkpoint into an `LDDetrModel` (and save it to `output_dir` if given)."""
    checkpoint = load_official_checkpoint(checkpoint_path, trust_checkpoint=trust_checkpoint)
    config = config_from_official_checkpoint(checkpoint)
    model = LDDetrModel(config)
    state_dict = convert_official_state_dict(checkpoint["model"])
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {checkpoint_path} does not fit LD-DETR: missing {missing}, unexpected {unexpected}"
        )
    if output_dir is not None:
        model.save_pretrained(output_dir, save_queues=save_queues)
        processor_from_official_checkpoint(checkpoint, config).save_pretrained(output_dir)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="official checkpoint (model_best.ckpt)")
    parser.add_argument("--output-dir", required=True, help="folder to write config.json and model.safetensors to")
    parser.add_argument("--no-queues", action="store_true", help="leave out the Distill Align queues (inference only)")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle any object the checkpoint holds (it can run code): only for files from a trusted source",
    )
    args = parser.parse_args(argv)
    try:
        model = convert_official_checkpoint(
            args.checkpoint, args.output_dir, save_queues=not args.no_queues, trust_checkpoint=args.trust_checkpoint
        )
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"lddetr-convert: error: {error}") from None
    print(
        f"converted {args.checkpoint} -> {args.output_dir} ({sum(p.numel() for p in model.parameters()):,} parameters)"
    )


if __name__ == "__main__":
    main()
