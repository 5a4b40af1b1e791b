import pytest
import torch

from legendfl.core.aggregation import layerwise_average, weighted_average


def test_fedavg_weighted_by_examples_by_hand():
    a = {"0.q.lora_A": torch.tensor([1.0, 2.0]), "head.w": torch.tensor([0.0])}
    b = {"0.q.lora_A": torch.tensor([3.0, 6.0]), "head.w": torch.tensor([4.0])}
    out = weighted_average([(1.0, a), (3.0, b)])
    assert torch.allclose(out["0.q.lora_A"], torch.tensor([2.5, 5.0]))  # (1*1 + 3*3)/4, (2 + 18)/4
    assert torch.allclose(out["head.w"], torch.tensor([3.0]))


def test_layerwise_average_over_devices_that_trained_each_layer():
    previous = {"0.m.lora_A": torch.tensor([9.0]), "1.m.lora_A": torch.tensor([9.0]), "2.m.lora_A": torch.tensor([9.0]),
                "head.w": torch.tensor([9.0])}
    deep = {"2.m.lora_A": torch.tensor([1.0]), "head.w": torch.tensor([1.0])}  # depth 1
    mid = {"1.m.lora_A": torch.tensor([2.0]), "2.m.lora_A": torch.tensor([3.0]), "head.w": torch.tensor([2.0])}  # depth 2
    out = layerwise_average([(1.0, deep), (1.0, mid)], previous)
    assert torch.equal(out["0.m.lora_A"], torch.tensor([9.0]))  # trained by no device: unchanged
    assert torch.allclose(out["1.m.lora_A"], torch.tensor([2.0]))  # n_l = 1
    assert torch.allclose(out["2.m.lora_A"], torch.tensor([2.0]))  # (1 + 3) / 2
    assert torch.allclose(out["head.w"], torch.tensor([1.5]))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        layerwise_average([(1.0, {"0.a": torch.zeros(2, 3)}), (1.0, {"0.a": torch.zeros(3, 3)})], {})


def test_run_config_validates_and_names_fields():
    from legendfl.config import RunConfig

    for kwargs, field in [({"strategy": "fedavg"}, "strategy must be one of"), ({"rounds": 0}, "rounds must be >= 1"),
                          ({"lr": -1.0}, "lr must be > 0"), ({"ema": 2.0}, "ema must be <= 1.0"),
                          ({"max_local_steps": 0}, "max_local_steps must be >= 1"),
                          ({"partition": "zipf"}, "partition must be one of"),
                          ({"legend_weighting": "size"}, "legend.weighting must be one of"),
                          ({"hetlora.gamma": 1.5}, "hetlora.gamma must be <= 1.0"),
                          ({"strategy_options": {"nope": {}}}, "unknown strategy 'nope'"),
                          ({"fedadapter.depth_steps": 2}, "unknown option(s) ['depth_steps'] of strategy 'fedadapter'"),
                          ({"bf16": "yes"}, "bf16 must be one of"),
                          ({"target_accuracy": 85.0}, "target_accuracy must be <= 1.0")]:
        with pytest.raises(ValueError) as err:
            RunConfig.from_sources(kwargs)
        assert field in str(err.value)
    assert RunConfig().strategy == "legend"
