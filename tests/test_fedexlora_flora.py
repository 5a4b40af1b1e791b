"""FedEx-LoRA and FLoRA (strategies/fedexlora.py, flora.py): aggregation that changes the frozen weights
(core/base_delta.py, client method "merged-lora")."""
import json

import pytest
import torch
from conftest import TINY_BERT, cli

from legendfl.core.base_delta import BaseDelta, BaseDeltaLedger, factors_dense
from legendfl.core.strategy import DeviceTask
from legendfl.core.training import TrainConfig
from legendfl.metrics.summary import read_records
from legendfl.strategies.fedexlora import residual_factors
from legendfl.strategies.flora import stacked_factors

STEM = "0.attention.self.query"


def _pair(a, b):
    return {f"{STEM}.lora_A": torch.tensor(a, dtype=torch.float32), f"{STEM}.lora_B": torch.tensor(b, dtype=torch.float32)}


# three devices with examples 1, 1 and 2 (p = 1/4, 1/4, 1/2); rank 1 each for FedEx-LoRA
DEVICES = [(1.0, _pair([[1, 0]], [[1], [0]])), (1.0, _pair([[0, 1]], [[0], [1]])), (2.0, _pair([[1, 1]], [[1], [1]]))]
# by hand: sum p_k B_k A_k = 1/4 [[1,0],[0,0]] + 1/4 [[0,0],[0,1]] + 1/2 [[1,1],[1,1]]
AVERAGE_OF_PRODUCTS = torch.tensor([[0.75, 0.5], [0.5, 0.75]])


def test_fedexlora_base_plus_residual_plus_product_of_averages_is_base_plus_average_of_products():
    average = {f"{STEM}.lora_A": torch.tensor([[0.75, 0.75]]), f"{STEM}.lora_B": torch.tensor([[0.75], [0.75]])}
    residual = factors_dense(residual_factors(DEVICES, average))[STEM]
    # by hand: A-bar = [.75 .75], B-bar = [.75 .75]^T, B-bar A-bar = .5625 everywhere
    assert torch.allclose(residual.float(), torch.tensor([[0.1875, -0.0625], [-0.0625, 0.1875]]), atol=1e-7)
    base = torch.tensor([[0.3, -1.2], [2.0, 0.7]])
    scaling = 2.0
    merged = base + scaling * residual.float() + scaling * (average[f"{STEM}.lora_B"] @ average[f"{STEM}.lora_A"])
    assert torch.allclose(merged, base + scaling * AVERAGE_OF_PRODUCTS, atol=1e-6)
    assert next(iter(residual_factors(DEVICES, average).values())).shape[0] == 4  # (n + 1) r


def test_flora_stacked_product_is_the_weighted_sum_of_the_products_whatever_the_ranks():
    devices = DEVICES[:2] + [(2.0, _pair([[1, 1], [1, -1]], [[1, 0], [0, 1]]))]  # device 3 at rank 2
    stack = stacked_factors(devices)
    assert stack[f"{STEM}.delta_A"].shape == (4, 2) and stack[f"{STEM}.delta_B"].shape == (2, 4)  # sum of ranks
    # by hand: 1/4 [[1,0],[0,0]] + 1/4 [[0,0],[0,1]] + 1/2 [[1,1],[1,-1]]
    assert torch.allclose(factors_dense(stack)[STEM].float(), torch.tensor([[0.75, 0.5], [0.5, -0.25]]), atol=1e-7)


def test_the_ledger_sends_each_device_what_it_missed_and_the_dense_change_when_that_is_smaller():
    ledger = BaseDeltaLedger()
    one = {f"{STEM}.delta_A": torch.ones(1, 4), f"{STEM}.delta_B": torch.ones(4, 1)}  # 32 bytes of factors, dense 64
    assert ledger.for_device(0).download_bytes == 0  # nothing merged yet
    ledger.add(1, one)
    ledger.took_part([0, 1], 1)
    for device in (0, 2):  # device 0 took part in round 1 (made then, sent in round 2); device 2 never did
        sent = ledger.for_device(device)
        assert sent.download_bytes == 32 and torch.allclose(sent.dense()[STEM], torch.ones(4, 4))
    ledger.took_part([0], 2)  # device 0 received round 1's increment in round 2
    assert ledger.for_device(0).download_bytes == 0 and torch.allclose(ledger.for_device(0).dense()[STEM], torch.ones(4, 4))
    ledger.add(2, one)
    ledger.add(3, one)  # three increments (96 bytes) are larger than the dense change (64): the oldest is dropped
    assert [r for r, _ in ledger.increments] == [2, 3] and ledger.dropped_through == 1
    sent = ledger.for_device(0)  # holds round 1's; rounds 2 and 3's are kept: their factors
    assert sent.download_bytes == 64 and not sent.new_dense and torch.allclose(sent.held[STEM], torch.ones(4, 4))
    late = ledger.for_device(1)  # took part in round 1: lacks round 1's increment, no longer kept: the dense change
    assert late.download_bytes == 64 and late.new_dense and not late.new and not late.held
    for sent in (ledger.for_device(0), late):
        assert torch.allclose(sent.dense()[STEM], 3 * torch.ones(4, 4))
    ledger.took_part([0], 3)
    assert ledger.for_device(0).download_bytes == 32  # round 3's increment only
    assert torch.allclose(ledger.for_device(0).dense()[STEM], 3 * torch.ones(4, 4))


def test_merged_lora_trains_on_the_changed_weights_and_leaves_the_shared_model_as_it_was(tiny_bert_dir):
    from legendfl.core.lora_layout import LoraLayout
    from legendfl.methods.merged_lora import MergedLoraMethod, changed_weights
    from legendfl.models.backbone import load_backbone

    backbone = load_backbone(tiny_bert_dir, num_labels=2, seed=0)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    fan_in, fan_out = backbone.linear_modules["attention.self.query"]
    change = torch.randn(fan_out, fan_in) * 0.1
    layout = LoraLayout.all_layers(2, backbone.num_layers)
    params = {**backbone.spec.init_lora(layout, 0), **backbone.spec.head}
    task = DeviceTask(0, 1, params, layout, "merged-lora", base_delta=BaseDelta(held={"3.attention.self.query": change}))
    weight = backbone.model.get_submodule(f"{backbone.block_prefix}.3.attention.self.query").weight
    with changed_weights(backbone, task, scaling=2.0):
        assert torch.allclose(weight, before[f"{backbone.block_prefix}.3.attention.self.query.weight"] + 2.0 * change)
    with pytest.raises(ValueError, match="base_delta"):
        bad = DeviceTask(0, 1, params, layout, "merged-lora", base_delta=BaseDelta(held={"3.attention.self.query": change.T[:3]}))
        with changed_weights(backbone, bad, scaling=2.0):
            pass
    MergedLoraMethod().train(task, backbone, *_tiny_data(backbone), TrainConfig(batch_size=4, max_local_steps=2))
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit


def _tiny_data(backbone):
    from legendfl.data.tasks import load_task
    from legendfl.models.tokenized import TokenizedData

    return TokenizedData(backbone.tokenizer, load_task("sst2").train[:16], 32), list(range(16))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedexlora", "flora"])
def test_a_run_prices_the_change_it_sends_and_exports_a_model_plain_transformers_loads(tmp_path, strategy):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / strategy
    r = cli("run", "--model", TINY_BERT, "--strategy", strategy, "--num-devices", "4", "--rounds", "3",
            "--max-local-steps", "2", "--max-examples-per-device", "24", "--max-dev-examples", "32", "--lr", "5e-3",
            "--out-dir", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    records = read_records(out / "rounds.jsonl")
    first, later = records[0]["devices"], records[1]["devices"]
    assert all(d["download_bytes"] == d["upload_bytes"] for d in first.values())  # nothing merged before round 1
    assert all(d["download_bytes"] > d["upload_bytes"] for d in later.values())  # round 1's change travels in round 2
    if strategy == "flora":  # the stack's rank is the sum of the devices' ranks: it grows with the devices
        assert records[0]["aggregation"]["stacked_rank"] == sum(d["ranks"][0] for d in first.values())
    else:
        assert records[0]["aggregation"]["residual_rank"] == (4 + 1) * 8
    model = AutoModelForSequenceClassification.from_pretrained(out / "merged_model")
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == strategy
    from legendfl.data.tasks import load_task
    from legendfl.engine.trainer import evaluate_model
    from legendfl.models.backbone import load_backbone
    from legendfl.models.tokenized import TokenizedData

    tokenizer = load_backbone(TINY_BERT, num_labels=2, seed=0).tokenizer
    dev = TokenizedData(tokenizer, load_task("sst2").dev[:32], config["max_length"])
    exported = evaluate_model(model.eval(), dev)  # the global model: the change and the LoRA merged into the weights
    assert exported["accuracy"] == pytest.approx(records[-1]["accuracy"], abs=1 / 32 + 1e-9)
    assert exported["loss"] == pytest.approx(records[-1]["eval_loss"], rel=1e-5)


def test_a_tasks_change_to_the_frozen_weights_crosses_a_flower_message_unchanged():
    from legendfl.runtime.flower.messages import decode_task, encode_task

    delta = BaseDelta(held={STEM: torch.randn(2, 2)}, new={f"{STEM}.delta_A": torch.randn(3, 2), f"{STEM}.delta_B": torch.randn(2, 3)},
                      new_dense={"1.output.dense": torch.randn(2, 4)})
    task = DeviceTask(2, 3, {"head.w": torch.ones(2)}, None, "merged-lora", base_delta=delta)
    back, _, _ = decode_task(encode_task(task, {"rounds": 3}, ["a", "b"]))
    for part in ("held", "new", "new_dense"):
        sent, got = getattr(delta, part), getattr(back.base_delta, part)
        assert sorted(sent) == sorted(got) and all(torch.equal(sent[k], got[k]) for k in sent)
    assert back.download_bytes == task.download_bytes
    plain, _, _ = decode_task(encode_task(DeviceTask(2, 3, {"head.w": torch.ones(2)}), {}, ["a", "b"]))
    assert plain.base_delta is None


@pytest.mark.slow
def test_a_device_that_missed_a_round_is_sent_the_residuals_it_missed(tmp_path):
    """FedEx-LoRA at rank 1 on 3 devices, device 2 offline in round 2: in round 3 it is sent round 1's residual
    (which device 0 got in round 2) and round 2's, so it downloads exactly round 1's residual more than device 0."""
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"2": [1, 0, 1]}))
    r = cli("run", "--model", TINY_BERT, "--strategy", "fedexlora", "--num-devices", "3", "--rounds", "3", "--lora-rank", "1",
            "--max-local-steps", "2", "--max-examples-per-device", "24", "--max-dev-examples", "32",
            "--availability-trace", str(trace), "--out-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-2000:]
    first, second, third = read_records(tmp_path / "run" / "rounds.jsonl")
    assert sorted(second["devices"]) == ["0", "1"] and [m["device"] for m in second["missing"]] == [2]
    round_one_residual = second["devices"]["0"]["download_bytes"] - second["devices"]["0"]["upload_bytes"]
    assert round_one_residual > 0
    assert third["devices"]["2"]["download_bytes"] - third["devices"]["0"]["download_bytes"] == round_one_residual
