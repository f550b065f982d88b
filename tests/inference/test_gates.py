"""Gate activation by crop content, through the predictor's crops, for a gated model (tiny seeded SGP-SAM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionsam.data.io import Volume
from lesionsam.data.transforms import PreprocessConfig
from lesionsam.inference.gates import NO_LESION_CROPS, crop_gate_rate, gate_activation
from lesionsam.inference.predictor import Predictor
from lesionsam.models import ModelConfig, build_model


def _case() -> tuple[Volume, Volume]:
    rng = np.random.default_rng(0)
    shape = (80, 160, 160)  # (D, H, W); 2 mm slices: a 64³ crop at 1 mm spans 32 slices
    image = rng.normal(40.0, 10.0, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[4:76, 4:156, 4:156] = 1  # organ
    label[8:11, 8:12, 8:13] = 2  # a 60-voxel lesion
    label[16:20, 16:20, 16:20] = 2  # a 64-voxel lesion, both in one corner: room for lesion-free crops
    image[label == 2] += 30.0
    geometry = dict(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
    return Volume(image, **geometry), Volume(label, **geometry)


def _predictor(method: str, gate: str = "learned") -> Predictor:
    torch.manual_seed(0)
    options = {"gate": gate} if method == "sgp_sam" else {}
    model = build_model(ModelConfig.from_preset("tiny", method=method, options=options)).eval()
    return Predictor(model, preprocess=PreprocessConfig(spacing=None))


def test_one_row_per_lesion_and_per_lesion_free_crop_with_the_models_own_decisions() -> None:
    image, label = _case()
    rows = gate_activation(_predictor("sgp_sam"), image, label, label=2, rng=np.random.default_rng(0))
    assert [r.lesion for r in rows] == [1, 2] + [0] * NO_LESION_CROPS
    assert [r.volume_ml for r in rows[:2]] == pytest.approx([60 * 2e-3, 64 * 2e-3])  # voxels x 2 mm³, in mL
    assert all(r.gate_rate == 1.0 for r in rows)  # a fresh gate is open (bias +3), whatever the crop
    closed = gate_activation(_predictor("sgp_sam", "off"), image, label, label=2, rng=np.random.default_rng(0))
    assert all(r.gate_rate == 0.0 for r in closed)


def test_gate_rate_equals_the_encoders_decisions_and_gateless_models_are_refused() -> None:
    from lesionsam.data.crops import crop_or_pad

    image, label = _case()
    predictor = _predictor("sgp_sam")
    pre = predictor.preprocessor(image, label)
    dhw = np.array([40.0, 80.0, 80.0])
    crop, _ = crop_or_pad(pre.image, dhw, predictor.crop, pad_value=pre.background)
    with torch.inference_mode():
        gates = predictor.model.encode(torch.from_numpy(np.ascontiguousarray(crop))[None, None]).gates
    assert crop_gate_rate(predictor, pre, dhw) == float(gates.float().mean())
    with pytest.raises(ValueError, match="has no gates"):
        gate_activation(_predictor("finetune"), image, label, label=2, rng=np.random.default_rng(0))
