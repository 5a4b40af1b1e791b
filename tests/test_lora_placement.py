import re

import pytest
import torch

from legendfl.core.lora_layout import LoraLayout
from legendfl.methods.lora import get_lora_tensors, lora_adapter, set_lora_tensors


def _ranks_by_layer(model, prefix):
    out = {}
    for name, p in model.named_parameters():
        m = re.search(rf"{re.escape(prefix)}\.(\d+)\..*lora_A\.default\.weight$", name)
        if m:
            out.setdefault(int(m.group(1)), set()).add(p.shape[0])
    return out


def test_layout_places_ranks_on_exactly_the_chosen_layers(backbone):
    layout = LoraLayout({1: 3, 4: 5, 5: 7}, 6)  # non-contiguous, as the position pre-tests need
    params = {**backbone.spec.init_lora(layout, 0), **backbone.head_tensors()}
    with lora_adapter(backbone, layout, params) as model:
        assert _ranks_by_layer(model, backbone.block_prefix) == {1: {3}, 4: {5}, 5: {7}}
        n_modules = sum(1 for n, _ in model.named_parameters() if n.endswith("lora_A.default.weight"))
        assert n_modules == 3 * len(backbone.linear_modules) == 18  # all 6 linear modules per block
        # scaling alpha/r is the same constant on every layer
        scalings = {m.scaling["default"] for m in model.modules() if hasattr(m, "scaling") and "default" in getattr(m, "scaling", {})}
        assert scalings == {2.0}
    # the shared base model is restored afterwards
    assert not any("lora" in n for n, _ in backbone.model.named_parameters())


def test_per_layer_get_set_round_trip_on_a_subset(backbone):
    layout = LoraLayout.top(2, [2, 3, 4, 5, 6, 7])
    params = {**backbone.spec.init_lora(layout, 1), **backbone.head_tensors()}
    params = {k: v + 0.01 * torch.randn_like(v) for k, v in params.items()}
    with lora_adapter(backbone, layout, params) as model:
        got = get_lora_tensors(backbone, model)
        assert set(got) == {k for k in params if not k.startswith("head.")}
        assert {k.split(".")[0] for k in got} == {"4", "5"}
        for k, v in got.items():
            assert torch.equal(v, params[k])
        assert got["5.attention.self.query.lora_A"].shape == (7, 384)
        assert got["4.intermediate.dense.lora_B"].shape == (1536, 6)
        # another rank into the same layer is refused with a clear message
        bad = dict(got)
        bad["5.attention.self.query.lora_A"] = torch.zeros(3, 384)
        with pytest.raises(ValueError, match="does not match"):
            set_lora_tensors(backbone, model, bad)
        with pytest.raises(KeyError):
            set_lora_tensors(backbone, model, {**got, "2.attention.self.query.lora_A": torch.zeros(3, 384)})


def test_layout_validation_names_the_field():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoraLayout({0: 0}, 6)
    with pytest.raises(ValueError, match=r"layer index must be in \[0, 5\]"):
        LoraLayout({6: 4}, 6)
    with pytest.raises(ValueError, match="lora_depth"):
        LoraLayout.top(7, [1] * 6)
