"""Baselines: aggregation rules on hand-computed cases, parameter and traffic counts, CLI runs."""
import pytest
import torch

from legendfl.strategies.hetlora import RankTailPenalty, RankTailReport
from legendfl.core.strategy import DeviceResult, ModelSpec, lora_ranks
from legendfl.strategies.fedadapter import FedAdapter, FedAdapterOptions
from legendfl.strategies.fedlora import FedLoRA
from legendfl.strategies.full_finetune import FullFineTuning
from legendfl.strategies.hetlora import HetLoRA, HetLoRAOptions, pad, sparsity_weighted_aggregate, truncate
from legendfl.strategies.pretests import pretest_layout


def test_hetlora_truncation_and_zero_padding():
    glob = {"0.q.lora_A": torch.arange(12.0).reshape(4, 3), "0.q.lora_B": torch.arange(8.0).reshape(2, 4), "head.w": torch.ones(1)}
    t = truncate(glob, 2)
    assert torch.equal(t["0.q.lora_A"], glob["0.q.lora_A"][:2]) and torch.equal(t["0.q.lora_B"], glob["0.q.lora_B"][:, :2])
    a, b = pad(t["0.q.lora_A"], t["0.q.lora_B"], 4)
    assert a.shape == (4, 3) and b.shape == (2, 4) and a[2:].abs().sum() == 0 and b[:, 2:].abs().sum() == 0


def test_hetlora_sparsity_weighted_aggregation_by_hand():
    # device 1: rank 1, B A = [[1]] * [[2]] -> norm 2;  device 2: rank 2, B A = diag(1,1)*[[3,0],[0,0]] -> norm 3
    u1 = {"0.m.lora_A": torch.tensor([[2.0]]), "0.m.lora_B": torch.tensor([[1.0]])}
    u2 = {"0.m.lora_A": torch.tensor([[3.0], [0.0]]), "0.m.lora_B": torch.tensor([[1.0, 1.0]])}
    out = sparsity_weighted_aggregate([u1, u2], r_max=2)
    p1, p2 = 2 / 5, 3 / 5
    assert torch.allclose(out["0.m.lora_A"], torch.tensor([[p1 * 2 + p2 * 3], [0.0]]))
    assert torch.allclose(out["0.m.lora_B"], torch.tensor([[p1 * 1 + p2 * 1, p2 * 1]]))


def test_fedadapter_winner_is_chosen_by_number_not_string(backbone):
    s = FedAdapter(FedAdapterOptions(depth=2, width=8, window=2), seed=0)
    s.initialize(backbone.spec, list(range(6)))
    tasks = s.configure_round(1, list(range(6)))
    assert {s.assignment[d] for d in tasks} == {"shallow", "deeper", "wider"}
    assert {(t.config.depth, t.config.width) for t in tasks.values()} == {(2, 8), (4, 8), (2, 16)}
    assert s.candidate_evaluations(1) == {} and set(s.candidate_evaluations(2)) == {"shallow", "deeper", "wider"}
    # accuracies in percent: as strings "9.5" > "85.0" > "10.0"; as numbers deeper wins
    s.receive_evaluations(2, {"shallow": {"accuracy": 9.5}, "deeper": {"accuracy": 85.0}, "wider": {"accuracy": 10.0}})
    assert s.winner["config"] == (4, 8)
    nxt = s.configure_round(3, list(range(6)))
    assert {(t.config.depth, t.config.width) for t in nxt.values()} == {(4, 8), (6, 8), (4, 16)}
    # the wider trial starts as the winner's function: its extra up-projection columns are zero
    wide = next(t for t in nxt.values() if t.config.width == 16)
    assert wide.params["5.output.adapter.adapter_up.weight"][:, 8:].abs().sum() == 0


def test_full_model_fedavg_by_hand(backbone):
    s = FullFineTuning(seed=0)
    s.initialize(backbone.spec, [0, 1])
    key = next(iter(s.global_params))
    base = s.global_params[key]
    r = [DeviceResult(i, 1, {k: v + (i + 1) for k, v in s.global_params.items()}, num_examples=n) for i, n in ((0, 1), (1, 3))]
    s.aggregate_round(1, r)
    assert torch.allclose(s.global_params[key], base + (1 * 1 + 3 * 2) / 4)
    # its traffic per device is the whole model
    task = s.configure_round(2, [0])[0]
    n_params = sum(p.numel() for p in backbone.model.parameters())
    assert task.download_bytes == 4 * n_params


def test_fedlora_rank8_minilm_counts_match_hand_calculation(backbone):
    s = FedLoRA(seed=0, lora_rank=8)
    s.initialize(backbone.spec, [0, 1])
    task = s.configure_round(1, [0, 1])[0]
    per_layer = 4 * 8 * (384 + 384) + 8 * (384 + 1536) + 8 * (1536 + 384)  # q, k, v, attn-out; intermediate; output
    head = 384 * 2 + 2
    assert per_layer == 55296
    assert sum(v.numel() for v in task.params.values()) == 6 * per_layer + head == 332546
    assert task.download_bytes == 4 * 332546 == 1330184


def test_hetlora_tasks_use_truncated_ranks(backbone):
    s = HetLoRA(HetLoRAOptions(r_min=4, r_max=16), seed=0)
    s.initialize(backbone.spec, [0, 1])
    task = s.configure_round(1, [0, 1])[0]
    assert task.config.ranks == {l: 10 for l in range(6)}  # the middle rank before any report
    assert task.params["0.attention.self.query.lora_A"].shape == (10, 384)
    assert s.global_params["0.attention.self.query.lora_A"].shape == (16, 384)


def test_hetlora_self_prunes_a_device_whose_tail_shrank_by_hand():
    """HetLoRA's self-pruning (its paper's rank self-pruning): a device whose rank-tail norm fell during local training
    (``RankTailPenalty.report``) gets rank floor(gamma * r) from the next round on; one whose tail grew, or that
    reported nothing, keeps its rank; and never below r_min."""
    spec = ModelSpec(num_layers=2, linear_modules={"q": (4, 4)}, head={"head.w": torch.zeros(2)}, hidden_size=4,
                     base_param_count=0)
    s = HetLoRA(HetLoRAOptions(r_min=2, r_max=8, gamma=0.5), seed=0)
    s.initialize(spec, [0, 1, 2, 3])
    tasks = s.configure_round(1, [0, 1, 2, 3])
    assert {d: t.config.ranks[0] for d, t in tasks.items()} == {0: 5, 1: 5, 2: 5, 3: 5}  # the middle rank
    reports = {0: {"tail_norm_start": 1.0, "tail_norm": 0.5}, 1: {"tail_norm_start": 1.0, "tail_norm": 1.5}, 2: {},
               3: {"tail_norm_start": 1.0, "tail_norm": 0.2}}
    results = [DeviceResult(d, 1, {k: v + 0.1 for k, v in t.params.items()}, num_examples=8, metrics=reports[d])
               for d, t in tasks.items()]
    s.pruned_rank[3] = 2  # already at r_min: stays there
    results[3] = DeviceResult(3, 1, {k: v[:2] if k.endswith("lora_A") else v[:, :2] if k.endswith("lora_B") else v
                                     for k, v in results[3].params.items()}, num_examples=8, metrics=reports[3])
    assert lora_ranks(results[0].params) == {0: 5, 1: 5} and lora_ranks(results[3].params) == {0: 2, 1: 2}
    assert RankTailPenalty.report(reports[0]) == RankTailReport(1.0, 0.5) and RankTailPenalty.report({}) is None
    metrics = s.aggregate_round(1, results)
    assert metrics["pruned_devices"] == [0]
    assert s.pruned_rank == {0: 2, 3: 2}  # floor(0.5 * 5) = 2; device 3 not pruned below r_min
    assert {d: t.config.ranks[0] for d, t in s.configure_round(2, [0, 1, 2, 3]).items()} == {0: 2, 1: 5, 2: 5, 3: 2}


def test_pretest_layouts():
    assert pretest_layout("layers-d", 12).layers == [8, 9, 10, 11]
    assert pretest_layout("layers-s", 12).layers == [0, 1, 2, 3] and pretest_layout("layers-m", 12).layers == [4, 5, 6, 7]
    assert pretest_layout("depth-3", 6).ranks == {3: 8, 4: 8, 5: 8}
    inc, dec = pretest_layout("rank-inc", 12), pretest_layout("rank-dec", 12)
    assert inc.rank_sum == dec.rank_sum == pretest_layout("rank-avg", 12).rank_sum == pretest_layout("rank-rand", 12).rank_sum == 96
    assert list(inc.ranks.values()) == sorted(inc.ranks.values()) and list(dec.ranks.values())[::-1] == list(inc.ranks.values())
    with pytest.raises(ValueError, match="pretest must be one of"):
        pretest_layout("layers-x", 6)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["hetlora", "fedadapter", "full", "legend-no-depth", "legend-no-rank"])
def test_baseline_runs_from_the_cli_with_the_common_schema(tmp_path, strategy):
    """The schema, not learning: the tiny random BERT (conftest.py)."""
    from conftest import TINY_BERT, check_records, cli

    from legendfl.metrics.summary import read_records

    r = cli("run", "--model", TINY_BERT, "--strategy", strategy, "--num-devices", "3", "--rounds", "2", "--max-local-steps", "2",
            "--max-examples-per-device", "60", "--max-dev-examples", "200", "--eval-every", "2", "--fedadapter.window", "1",
            "--out-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trainable parameters per device" in r.stdout
    records = read_records(tmp_path / "rounds.jsonl")
    check_records(records)
    assert records[-1]["accuracy"] is not None and records[0]["strategy"] == strategy


def test_bottleneck_adapters_leave_the_shared_model_unchanged_when_removed(sst2_small):
    """methods/adapter.py: adapters.init is applied once to the shared model; with no active adapter
    (after a task's adapters are deleted) its outputs are the pretrained model's."""
    from legendfl.models.backbone import load_backbone
    from legendfl.methods.base import get_method
    from legendfl.engine.trainer import TrainConfig

    own = load_backbone("minilm", num_labels=2, seed=0)  # adapters.init changes the model's classes: not the shared fixture
    train, _ = sst2_small
    batch = train.batch(list(range(8)))
    with torch.no_grad():
        before = own.model(**batch).logits.clone()
    s = FedAdapter(FedAdapterOptions(depth=2, width=8), seed=0)
    s.initialize(own.spec, [0])
    task = s.configure_round(1, [0])[0]
    result = get_method("adapter").train(task, own, train, list(range(64)), TrainConfig(batch_size=8, max_local_steps=2))
    assert set(k for k in result.params if not k.startswith("head.")) == set(k for k in task.params if not k.startswith("head."))
    # hand count: adapters in the top 2 blocks; the backward enters the frozen weights of the upper block only
    assert result.work.trained_depth == 1 and result.work.trained_layers == 1 and result.work.lora_upload_bytes > 0
    with torch.no_grad():
        after = own.model(**batch).logits
    assert torch.equal(before, after)
    assert not any("adapters" in n for n, _ in own.model.named_parameters())
