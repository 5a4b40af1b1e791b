"""MergeSFL: split training equals the unsplit model, its controller on hand-made speeds and label counts, the split
round's clock against a hand computation, a run end to end and bad options. The tiny random BERT (conftest.py):
what is checked is arithmetic and plumbing, not learning; real SST-2 sentences."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_BERT, cli, tiny_decoder
from safetensors.torch import load_file
from transformers import AutoTokenizer

from legendfl.config import RunConfig
from legendfl.core.lora_layout import LoraLayout
from legendfl.core.split import SERVER_ID, SplitPlan, activation_bytes
from legendfl.core.work import DeviceWork
from legendfl.engine.split_training import merged_inputs, split_iteration
from legendfl.fleet.devices import DeviceRoundState
from legendfl.fleet.split_clock import split_round_timing
from legendfl.methods.lora import lora_adapter
from legendfl.models.backbone import load_backbone
from legendfl.models.generative import IGNORE, CausalLMData
from legendfl.models.keys import lora_key_of, lora_regex
from legendfl.models.tokenized import TokenizedData
from legendfl.strategies.feature_merging import kl_divergence, merged_divergence, regulate_batches, select_devices
from legendfl.strategies.mergesfl import MergeSFLOptions


@pytest.fixture(scope="module", params=["bert", "llama"])
def tiny64(request, tmp_path_factory):
    """The tiny BERT (a classifier) or a tiny Llama (a decoder, prompt/answer pairs) in float64: equalities hold to
    1e-10 there, not only to fp32's rounding."""
    if request.param == "bert":
        backbone = load_backbone(TINY_BERT, num_labels=2, seed=0)
    else:
        backbone = tiny_decoder("llama", tmp_path_factory.mktemp("llama"), AutoTokenizer.from_pretrained(TINY_BERT))
    backbone.model.double()
    return backbone


def _data(backbone, sst2):
    if backbone.task_type == "classification":
        return TokenizedData(backbone.tokenizer, sst2.train[:40], 48)
    pairs = [(f"Review: {text} Sentiment:", " positive" if label else " negative") for text, _, label in sst2.train[:40]]
    return CausalLMData(backbone.tokenizer, pairs, 48)


def _units(batch) -> int:
    """Loss terms of a batch as the model's loss counts them: examples, or a decoder's answer tokens (shifted)."""
    labels = batch["labels"]
    return len(labels) if labels.dim() == 1 else int((labels[:, 1:] != IGNORE).sum())


def _close(a, b, rel=1e-10):
    """Equal up to float64 rounding: within 1e-10 of the gradient's own norm. (In fp32 the differences reach 4e-5
    of the norm on this model's tiny gradients, so an element-wise 1e-6 there would also pass a 0.1% wrong scale.)"""
    assert float((a - b).norm()) <= rel * float(b.norm()) + 1e-30, float((a - b).norm() / b.norm())


def test_split_forward_backward_gives_the_unsplit_models_gradients(tiny64, sst2):
    """Devices' bottoms at their own widths, features merged, the top on the merged batch: the top's (and a
    classifier's head's) gradients equal the whole model's on the merged batch, and the devices' bottom gradients
    add up to its bottom gradients (float64, see ``_close``); with the dispatch rule each device's is the gradient
    of its own examples' (a decoder: answer tokens') mean loss."""
    torch.manual_seed(0)
    tiny = tiny64
    L, split = tiny.num_layers, 2
    layout = LoraLayout.all_layers(4, L)
    params = {k: torch.randn_like(v) * 0.05 for k, v in tiny.spec.init_lora(layout, 0).items()}  # B != 0: every path live
    params.update(tiny.head_tensors())
    params = {k: v.double() for k, v in params.items()}
    data = _data(tiny, sst2)
    rows = [[0, 1, 2], [3, 4, 5, 6, 7], [8, 9]]  # three devices, 3 + 5 + 2 examples, different padded widths
    batches = [data.batch(np.asarray(r)) for r in rows]
    assert len({b["input_ids"].shape[1] for b in batches}) > 1
    regex = lora_regex(tiny.block_prefix)
    with lora_adapter(tiny, layout, params) as model:
        model.double().eval()  # dropout off: the two computations draw nothing
        live = dict(tiny.model.named_parameters())
        canonical = {n: lora_key_of(regex, n) for n in live}
        bottom = [n for n, k in canonical.items() if k is not None and int(k.split(".")[0]) < split]
        top = [n for n, k in canonical.items() if k is not None and int(k.split(".")[0]) >= split] + list(tiny.head_names)
        for n in top:
            live[n].requires_grad_(True)
        own = [{n: live[n].detach().clone().requires_grad_(True) for n in bottom} for _ in rows]
        loss, _ = split_iteration(tiny, split, own, batches, dispatch=False)
        split_top = {n: live[n].grad.clone() for n in top}
        for n in top:
            live[n].grad = None

        width = max(b["input_ids"].shape[1] for b in batches)
        whole = merged_inputs(batches, width)
        whole["input_ids"] = torch.cat([torch.nn.functional.pad(b["input_ids"], (0, width - b["input_ids"].shape[1]),
                                                                value=data.pad_id) for b in batches])
        if "token_type_ids" in batches[0]:
            whole["token_type_ids"] = torch.zeros_like(whole["input_ids"])
        for n in bottom:
            live[n].requires_grad_(True)
        out = tiny.model(**whole)
        out.loss.backward()
        assert float(out.loss.detach()) == pytest.approx(float(loss), abs=1e-12)
        for n in top:
            _close(split_top[n], live[n].grad)
        for n in bottom:
            _close(sum(o[n].grad for o in own), live[n].grad)
        assert any(float(live[n].grad.abs().sum()) > 0 for n in bottom)

        plain = {n: [o[n].grad.clone() for o in own] for n in bottom}  # the dispatch rule: scaled by N / b_i
        for o in own:
            for t in o.values():
                t.grad = None
        split_iteration(tiny, split, own, batches, dispatch=True)
        for n in bottom:
            for i, r in enumerate(rows):
                # Llama's RMSNorm computes in float32 whatever the model's dtype: a backward of s x g then differs
                # from s x (backward of g) by about 4e-8 of the norm; BERT's is linear to float64's rounding
                _close(own[i][n].grad, plain[n][i] * (sum(_units(b) for b in batches) / _units(batches[i])),
                       rel=1e-10 if tiny.task_type == "classification" else 1e-6)
        for n in top + bottom:
            live[n].requires_grad_(False)
            live[n].grad = None


def test_batch_sizes_are_regulated_by_speed():
    # eq. 9: b_i = floor(D * cost_fastest / cost_i), at least 1
    assert regulate_batches({0: 0.1, 1: 0.2, 2: 0.35, 3: 1.0, 4: 5.0}, 16) == {0: 16, 1: 8, 2: 4, 3: 1, 4: 1}
    assert regulate_batches({7: 0.3}, 8) == {7: 8}
    with pytest.raises(ValueError, match="max_batch_size"):
        regulate_batches({0: 1.0}, 0)


def test_feature_merging_chooses_by_kl_examples_and_fairness():
    counts = {0: [10, 0], 1: [0, 10], 2: [5, 5], 3: [10, 0]}  # reference: the mean, [0.625, 0.375]
    sizes = {d: 4 for d in counts}
    chosen, kl = select_devices(sizes, counts, {}, kl_threshold=0.05)
    assert chosen == [0, 1, 2, 3] and kl == pytest.approx(0.0, abs=1e-9)  # all of them merge to the reference itself
    # room for 8 examples: {0,1} and {1,3} merge to [0.5, 0.5] (KL 0.0323), {0,2} and {2,3} to [0.75, 0.25] (0.0354),
    # {0,3} and {1,2} are far off; all four near ones carry 8 examples, so fairness decides: 1 and 3 took part least
    participation = {0: 3, 1: 0, 2: 1, 3: 0}
    by_hand = 0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)
    chosen, kl = select_devices(sizes, counts, participation, budget=8, kl_threshold=0.05)
    assert chosen == [1, 3] and kl == pytest.approx(by_hand, rel=1e-9)
    # the same KL for a set chosen otherwise (the no-merging ablation's record), weighted by batch size
    assert merged_divergence(sizes, counts, [1, 3]) == pytest.approx(by_hand, rel=1e-9)
    skewed = 0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375)  # 3 of class 0 per 1 of class 1
    # batches 4, 2, 4 of devices 0, 1, 2: class 0 is (4 x 1 + 2 x 0 + 4 x 0.5) / 10 = 0.6 of the merged batch
    assert merged_divergence({0: 4, 1: 2, 2: 4, 3: 4}, counts, [0, 1, 2]) == pytest.approx(
        0.6 * math.log(0.6 / 0.625) + 0.4 * math.log(0.4 / 0.375), rel=1e-9)
    assert merged_divergence(sizes, counts, [0, 2]) == pytest.approx(skewed, rel=1e-9)
    assert kl_divergence([0.75, 0.25], [0.625, 0.375]) == pytest.approx(0.75 * math.log(1.2) + 0.25 * math.log(0.25 / 0.375))
    # nothing within a threshold of 0: the least KL wins ({0,1} and {1,3} tie; fairness again)
    assert select_devices(sizes, counts, participation, budget=8, kl_threshold=0.0)[0] == [1, 3]
    # a device cap of one: the single device closest to the reference is the balanced one
    assert select_devices(sizes, counts, participation, max_devices=1)[0] == [2]
    with pytest.raises(ValueError, match="ingress_budget"):
        select_devices(sizes, counts, {}, budget=3)
    # beyond the exact search (20 devices): the greedy search still balances the classes within the budget
    many = {d: [10, 0] if d % 2 else [0, 10] for d in range(20)}
    chosen, kl = select_devices({d: 4 for d in many}, many, {}, budget=16)
    assert len(chosen) == 4 and sum(d % 2 for d in chosen) == 2 and kl == pytest.approx(0.0, abs=1e-9)


def test_the_split_rounds_clock_against_a_hand_computation():
    """flops cost model: seconds = FLOPs / (GFLOP/s x 1e9); 8 Mb/s = 1e6 bytes/s."""
    def state(d, gflops, mbps):
        return DeviceRoundState(d, 1, 0, gflops, mbps, mbps, None)

    def work(fwd, bwd, up, down):
        return DeviceWork(forward_flops=fwd * 1e9, backward_flops=bwd * 1e9, upload_bytes=up, download_bytes=down)

    states = {0: state(0, 1.0, 8.0), 1: state(1, 2.0, 4.0)}
    iterations = {0: [work(1, 2, 1e6, 2e6), work(1, 2, 1e6, 2e6)],  # fwd 1 s, up 1 s, down 2 s, bwd 2 s
                  1: [work(2, 2, 1e6, 1e6), work(4, 2, 1e6, 1e6)]}  # fwd 1 / 2 s, up 2 s, down 2 s, bwd 1 s
    models = {0: work(0, 0, 3e6, 1e6), 1: work(0, 0, 1e6, 1e6)}  # download 1 s / 2 s, upload 3 s / 2 s
    server = [work(3, 7, 0, 0), work(1, 1, 0, 0)]  # 1 s and 0.2 s at 10 GFLOP/s
    t = split_round_timing(states, iterations, models, state(SERVER_ID, 10.0, 8.0), server, "flops")
    # iteration 1: device 0 sends at 1 + 1 + 1 = 3 s, device 1 at 2 + 1 + 2 = 5 s; the server ends at 6 s; device 0
    # is ready at 6 + 2 + 2 = 10 s, device 1 at 6 + 2 + 1 = 9 s. Iteration 2: 10 + 1 + 1 = 12 and 9 + 2 + 2 = 13 s;
    # the server ends at 13.2 s; ready at 17.2 and 16.2 s; the models uploaded at 20.2 and 18.2 s.
    assert t.round_time_s == pytest.approx(20.2)
    assert t.server_compute_s == pytest.approx(1.2)
    assert t.iteration_s == pytest.approx([10.0 - 1.0, 17.2 - 10.0])
    assert t.devices[0].download_s == pytest.approx(1 + 2 + 2) and t.devices[0].upload_s == pytest.approx(1 + 1 + 3)
    assert t.devices[0].total_s == pytest.approx(5 + 2 + 4 + 5) and t.devices[1].total_s == pytest.approx(6 + 3 + 2 + 6)
    assert activation_bytes(3, 10, 8) == (3 * 10 * 8 * 4 + 3 * 12, 3 * 10 * 8 * 4)


def test_bad_options_are_refused_by_name():
    for bad, field in (({"split_layer": 0}, "mergesfl.split_layer"), ({"max_batch_size": 0}, "mergesfl.max_batch_size"),
                       ({"ingress_budget": 0}, "mergesfl.ingress_budget"), ({"kl_threshold": -1.0}, "mergesfl.kl_threshold")):
        with pytest.raises(ValueError, match=field):
            MergeSFLOptions(**bad)
    with pytest.raises(ValueError, match=r"mergesfl.split_layer must be in \[1, 5\]"):
        MergeSFLOptions(split_layer=6).check_num_layers(6)
    with pytest.raises(ValueError, match="round_deadline_median must be unset for strategy 'mergesfl'"):
        RunConfig.from_sources({"strategy": "mergesfl", "round_deadline_median": 1.5})
    with pytest.raises(ValueError, match="split_layer"):
        SplitPlan(6, 6, 4, 8)
    with pytest.raises(ValueError, match="batch_size"):
        SplitPlan(3, 6, 4, 0)


@pytest.mark.slow
def test_a_mergesfl_run_records_its_choices_its_activations_and_exports_one_adapter(tmp_path):
    out = tmp_path / "run"
    r = cli("run", "--strategy", "mergesfl", "--model", TINY_BERT, "--num-devices", "5", "--rounds", "3",
            "--max-local-steps", "3", "--max-examples-per-device", "40", "--max-dev-examples", "40", "--max-length", "32",
            "--mergesfl.ingress-budget", "40", "--threads", "1", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    heard = set()
    for rec in records:
        agg = rec["aggregation"]
        chosen = agg["selected"]
        assert sorted(int(d) for d in rec["devices"]) == chosen and sum(agg["batch_sizes"].values()) <= 40
        assert agg["merged_batch"] == sum(agg["batch_sizes"].values()) and len(agg["activation_upload_bytes"]) == 3
        for d, entry in rec["devices"].items():
            assert entry["batch_size"] == agg["batch_sizes"][d] and entry["examples"] <= 3 * entry["batch_size"]
            assert entry["total_s"] + entry["waiting_s"] == pytest.approx(rec["round_time_s"], abs=1e-3)
            assert entry["upload_bytes"] > entry["work"]["lora_upload_bytes"] > 0  # features on top of the LoRA
        assert rec["round_uplink_bytes"] == sum(e["upload_bytes"] for e in rec["devices"].values())
        assert rec["round_uplink_bytes"] - sum(e["work"]["lora_upload_bytes"] for e in rec["devices"].values()) \
            == sum(agg["activation_upload_bytes"])  # the traffic counts every iteration's features
        if rec["round"] == 1:
            assert agg["merged_kl"] is None  # nobody heard from yet: chosen at random within the budget
        elif not (set(range(5)) - heard):
            assert agg["merged_kl"] is not None
        heard |= set(chosen)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")  # bottom and top LoRA, one peft adapter
    layers = {int(k.split(".layer.")[1].split(".")[0]) for k in adapter if "lora_A" in k}
    assert layers == set(range(6))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == records[-1]["accuracy"]


def test_the_flower_runtime_refuses_a_split_round_in_one_line():
    """Flower carries one task per node and round; a split round needs the server in every iteration."""
    from legendfl.runtime.flower.transport import FlowerTransport

    transport = FlowerTransport(None, RunConfig(num_devices=2, strategy="mergesfl"), ["negative", "positive"], 1.0, 1.0)
    tasks = {SERVER_ID: object(), 0: object()}
    with pytest.raises(ValueError, match="strategy 'mergesfl' runs split rounds.*run it in the simulator"):
        transport.run_round(1, tasks)


def test_a_devices_batch_never_exceeds_what_it_holds_or_the_budget():
    """The transcription's rule (the train split caps each client's batch): a device that reported 3 examples gets
    at most 3 per iteration, so the merged label distribution counts only examples that come."""
    from legendfl.core.strategy import ModelSpec
    from legendfl.strategies.mergesfl import MergeSFL

    spec = ModelSpec(num_layers=4, linear_modules={"q": (8, 8)}, head={}, hidden_size=8, base_param_count=0)
    for options, expected in ((MergeSFLOptions(), {0: 16, 1: 3, 2: 8}), (MergeSFLOptions(ingress_budget=6), {0: 6, 1: 3, 2: 6}),
                              (MergeSFLOptions(regulation=False), {0: 16, 1: 3, 2: 16})):
        strategy = MergeSFL(options)
        strategy.initialize(spec, [0, 1, 2])
        strategy.label_counts = {0: [50, 50], 1: [3, 0], 2: [10, 30]}
        strategy.compute_s, strategy.transfer_s = {0: 0.1, 1: 0.1, 2: 0.15}, {0: 0.0, 1: 0.0, 2: 0.05}
        assert strategy.batch_sizes([0, 1, 2]) == expected
