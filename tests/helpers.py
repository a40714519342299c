"""Small configs, random inputs, generated videos and a tiny CLIP shared by the tests."""

import contextlib
import copy
import json
from fractions import Fraction
from pathlib import Path
from unittest import mock

import av
import numpy as np
import torch
import torch.nn.functional as F

from modeling_lddetr import LDDetrConfig, fused_dropout

NO_DROPOUT = dict(
    unimodal_dropout=0.0, context_query_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, hidden_dropout=0.0
)


# the sizes of a model small enough for tests; tiny_config adds tiny feature dims
TINY_SIZES = dict(hidden_size=32, num_attention_heads=4, ffn_dim=64, queue_length=16, num_convolutional_blocks=2)


def tiny_config(**overrides) -> LDDetrConfig:
    settings = dict(TINY_SIZES, video_feature_dim=20, text_feature_dim=12, num_queries=5)
    settings.update(overrides)
    return LDDetrConfig(**settings)


def random_batch(config: LDDetrConfig, video_lengths, text_lengths, seed: int = 0, padded_video=None, padded_text=None):
    """Features with prefix masks; padding is zeros. Returns (inputs dict, labels list)."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(video_lengths)
    L = padded_video or max(video_lengths)
    N = padded_text or max(text_lengths)
    video = torch.zeros(batch, L, config.video_feature_dim)
    text = torch.zeros(batch, N, config.text_feature_dim)
    video_mask = torch.zeros(batch, L)
    text_mask = torch.zeros(batch, N)
    labels = []
    for b, (lv, lt) in enumerate(zip(video_lengths, text_lengths)):
        video[b, :lv] = torch.randn(lv, config.video_feature_dim, generator=generator)
        text[b, :lt] = torch.randn(lt, config.text_feature_dim, generator=generator)
        video_mask[b, :lv] = 1
        text_mask[b, :lt] = 1
        center = torch.rand(1, generator=generator).item() * 0.6 + 0.2
        saliency = torch.zeros(lv)
        start = int((center - 0.1) * lv)
        end = max(start + 1, int((center + 0.1) * lv))
        saliency[start:end] = torch.randint(1, 13, (end - start,), generator=generator).float()
        labels.append(
            {
                "spans": torch.tensor([[center, 0.2]]),
                "saliency_scores": saliency,
                "saliency_pos_indices": torch.tensor([start, end - 1]),
                "saliency_neg_indices": torch.tensor([0, lv - 1]),
            }
        )
    inputs = dict(
        video_features=video, video_attention_mask=video_mask, text_features=text, text_attention_mask=text_mask
    )
    return inputs, labels


# parameters that earlier versions of this package (and the official code) named with abbreviations: new -> old.
# Written from the old module structure, independently of modeling_lddetr.RENAMED_KEYS.
OLD_PARAMETER_NAMES = {
    "self_attn_query_content_proj": "sa_qcontent_proj",
    "self_attn_query_pos_proj": "sa_qpos_proj",
    "self_attn_key_content_proj": "sa_kcontent_proj",
    "self_attn_key_pos_proj": "sa_kpos_proj",
    "self_attn_value_proj": "sa_v_proj",
    "cross_attn_query_content_proj": "ca_qcontent_proj",
    "cross_attn_query_pos_proj": "ca_qpos_proj",
    "cross_attn_key_content_proj": "ca_kcontent_proj",
    "cross_attn_key_pos_proj": "ca_kpos_proj",
    "cross_attn_value_proj": "ca_v_proj",
    "cross_attn_query_pos_sine_proj": "ca_qpos_sine_proj",
    "anchor_position_head": "ref_point_head",
    "anchor_width_head": "ref_anchor_head",
    "anchor_offset_head": "bbox_embed",
    "clip_score_weight": "w4C",
    "token_score_weight": "w4Q",
    "clip_token_score_weight": "w4mlu",
    "predictor": "h",
    "temperature": "temp",
}


def assert_same_model_outputs(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Two models with bit-identical weights agree to float rounding, not bit for bit: with several threads the CPU
    GEMM splits its work by the weights' memory alignment, which differs between a tensor loaded from a file and
    one made in place (measured: 6e-8 on an AMD EPYC with AVX2, 0 at one thread)."""
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def with_kernels(module: torch.nn.Module, kernels: str) -> torch.nn.Module:
    """A copy of module (the same parameters and buffers) whose every part runs `kernels` ("eager" or "fused")."""
    twin = copy.deepcopy(module)
    for part in twin.modules():
        if hasattr(part, "kernels"):
            part.kernels = kernels
    return twin


def _same_layout(recorded: torch.Size, requested: torch.Size) -> bool:
    # the fused attention drops its weights as (B * heads, Lq, Lk), the attention formula as (B, heads, Lq, Lk)
    return recorded == requested or (len(requested) == 4 and recorded == (requested[0] * requested[1], *requested[2:]))


@contextlib.contextmanager
def recorded_dropout_masks():
    """Record, in call order, every mask the fused dropout draws (`fused_dropout.keep_mask`: the Dropout modules,
    the fused attention's weights, the fused input layer) as (bool mask, p); torch's own dropout must not draw one
    meanwhile."""
    masks, draw, torch_dropout = [], fused_dropout.keep_mask, F.dropout

    def recording(shape, p):
        mask = draw(shape, p)
        masks.append((mask, p))
        return mask

    def no_torch_mask(x, p=0.5, training=True, inplace=False):
        assert not (training and 0.0 < p < 1.0), f"torch's dropout drew a mask of shape {tuple(x.shape)}"
        return torch_dropout(x, p, training, inplace)

    with mock.patch.object(fused_dropout, "keep_mask", recording), mock.patch.object(F, "dropout", no_torch_mask):
        yield masks


@contextlib.contextmanager
def replayed_dropout_masks(masks):
    """torch's dropout (`F.dropout`: nn.Dropout, the attention formula) given the recorded masks one by one in call
    order, each checked against the rate and the shape it is asked for; every mask must be used, and the fused
    dropout must not draw meanwhile."""
    pending, torch_dropout = list(masks), F.dropout

    def replaying(x, p=0.5, training=True, inplace=False):
        if not (training and 0.0 < p < 1.0):
            return torch_dropout(x, p, training, inplace)
        assert pending, f"a dropout of shape {tuple(x.shape)} beyond the {len(masks)} recorded masks"
        mask, recorded_p = pending.pop(0)
        assert recorded_p == p and _same_layout(mask.shape, x.shape), (
            f"mask {len(masks) - len(pending)}: recorded p={recorded_p} {tuple(mask.shape)}, "
            f"asked p={p} {tuple(x.shape)}"
        )
        return x * mask.view(x.shape).to(x.dtype) * (1.0 / (1.0 - p))

    def no_fused_mask(shape, p):
        raise AssertionError(f"the fused dropout drew a mask of shape {tuple(shape)}")

    with mock.patch.object(F, "dropout", replaying), mock.patch.object(fused_dropout, "keep_mask", no_fused_mask):
        yield
    assert not pending, f"{len(pending)} of the {len(masks)} recorded masks were not asked for"


def compile_counting_graphs(fn):
    """torch.compile(fn) with a backend that runs every graph dynamo captures as it is -> (the compiled fn, the
    list those graphs are appended to): one graph means no graph break."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module

    return torch.compile(fn, backend=backend), graphs


def old_key(key: str) -> str:
    """A state-dict key as earlier versions of this package wrote it (the anchors sat on the model itself)."""
    key = ".".join(OLD_PARAMETER_NAMES.get(part, part) for part in key.split("."))
    return key.removeprefix("loop_decoder.") if key.startswith("loop_decoder.anchor_embed.") else key


def write_video(path, frame_times, colour_of, size=64, codec="mpeg4", pix_fmt="yuv420p", fps=10):
    """Encode one solid-colour frame per timestamp (seconds); colour_of(index, time) -> RGB. fps: the nominal rate;
    size: side of a square frame, or (width, height)."""
    width, height = (size, size) if isinstance(size, int) else size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, time in enumerate(frame_times):
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[:] = colour_of(index, time)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = round(time * 1000)
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def constant_rate(seconds, fps):
    return [index / fps for index in range(round(seconds * fps))]


# the projection (image feature) dim of the tiny CLIP that save_tiny_clip writes; its text hidden size is 32
TINY_CLIP_PROJECTION_DIM = 16
TINY_CLIP_TEXT_DIM = 32


def save_tiny_clip(folder: Path) -> str:
    """A randomly initialised CLIP (hidden 32, 2 layers, projection 16, 32-px images) with a tiny BPE tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(f"{letter}</w>" for letter in letters)]
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tower = dict(hidden_size=TINY_CLIP_TEXT_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokens),
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=TINY_CLIP_PROJECTION_DIM,
        ),
        vision_config=dict(**tower, image_size=32, patch_size=8, projection_dim=TINY_CLIP_PROJECTION_DIM),
        projection_dim=TINY_CLIP_PROJECTION_DIM,
    )
    torch.manual_seed(0)
    model_dir = folder / "model"
    CLIPModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(model_dir)
    return str(model_dir)
