"""On a CUDA device: an inference forward without host-device synchronisation, and mixed-precision training steps
(bf16 autocast, fp16 autocast with a gradient scaler) without NaN.

These need a GPU, which CI machines do not have: without one they are skipped, in CI too. Run them with
`python -m pytest tests/test_gpu.py` on a machine with CUDA.
"""

import pytest
import torch

from modeling_lddetr import LDDetrModel
from tests.helpers import random_batch, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _on_gpu(inputs: dict, labels: list[dict]) -> tuple[dict, list[dict]]:
    inputs = {name: tensor.cuda() for name, tensor in inputs.items()}
    labels = [{name: value.cuda() for name, value in label.items()} for label in labels]
    return inputs, labels


def test_inference_forward_makes_no_host_device_sync():
    # validate_inputs=False: the input checks read one flag per problem back to the host by design
    model = LDDetrModel(tiny_config(validate_inputs=False)).cuda().eval()
    inputs, _ = _on_gpu(*random_batch(model.config, [12, 7, 9], [5, 3, 4]))
    with torch.no_grad():
        model(**inputs)  # warm-up: lazy initialisation may synchronise once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            output = model(**inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert output.pred_spans.shape == (3, model.config.num_queries, 2)
    assert torch.isfinite(output.saliency_scores).all()


def test_bf16_autocast_training_step_has_no_nan():
    model = LDDetrModel(tiny_config()).cuda().train()
    inputs, labels = _on_gpu(*random_batch(model.config, [12, 7, 9], [5, 3, 4]))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = model(**inputs, labels=labels)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fp16_training_with_a_gradient_scaler_moves_the_weights_without_nan():
    torch.manual_seed(0)
    model = LDDetrModel(tiny_config()).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    inputs, labels = _on_gpu(*random_batch(model.config, [12, 7, 9], [5, 3, 4]))
    before = model.video_encoder.linear1.weight.detach().clone()
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        assert torch.isfinite(loss)
    assert scaler.get_scale() > 0
    assert not torch.equal(model.video_encoder.linear1.weight, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())
