"""The strategy <-> device protocol by hand: LEGEND's configure/aggregate on hand-made measurements, and a
task and a result through Flower messages and back."""
import math

import pytest
import torch

from legendfl.strategies.hetlora import RankTailPenalty
from legendfl.core.lora_layout import LoraLayout
from legendfl.strategies.fedadapter import AdapterLayout
from legendfl.core.strategy import DeviceResult, DeviceTask, ModelSpec
from legendfl.core.work import DeviceTiming, DeviceWork
from legendfl.strategies.legend import Legend, LegendOptions


def _spec():
    return ModelSpec(num_layers=4, linear_modules={"q": (3, 3)}, head={"head.w": torch.zeros(2)}, hidden_size=3,
                     base_param_count=0)


def _result(dev, rnd, layers, value, forward, backward, upload, rank_sum):
    params = {f"{l}.q.lora_{p}": torch.full((1,), float(value)) for l in layers for p in "AB"}
    params["head.w"] = torch.full((2,), float(value))
    work = DeviceWork(forward_flops=0, backward_flops=0, download_bytes=0, upload_bytes=100,
                      trained_depth=len(layers), rank_sum=rank_sum, lora_upload_bytes=100)
    return DeviceResult(dev, rnd, params, num_examples=10 * (dev + 1), work=work,
                        timing=DeviceTiming(0.0, forward, backward, upload))


def test_legend_configures_depths_from_measurements_and_aggregates_layerwise_by_hand():
    default = Legend(LegendOptions(rank_budget=16), seed=0, lora_rank=2)
    default.initialize(_spec(), [0, 1, 2])  # before any report: all L layers, FedLoRA's configuration
    assert {d: t.config.depth for d, t in default.configure_round(1, [0, 1, 2]).items()} == {0: 4, 1: 4, 2: 4}
    s = Legend(LegendOptions(rank_budget=16, initial_depth=2), seed=0, lora_rank=2)
    s.initialize(_spec(), [0, 1, 2])
    assert s.ranks == [2, 3, 5, 6]  # r0 = (16 - 6) // 4 = 2, step 1, remainder 2 to the top layers
    tasks = s.configure_round(1, [0, 1, 2])
    assert {d: t.config.depth for d, t in tasks.items()} == {0: 2, 1: 2, 2: 2}  # initial_depth before any report
    assert set(tasks[0].params) == {"2.q.lora_A", "2.q.lora_B", "3.q.lora_A", "3.q.lora_B", "head.w"}
    # device d trained layers 2 and 3 (rank sum 5 + 6 = 11); its measurements: forward f, backward b, upload u
    speeds = {0: (1.0, 2.0, 1.1), 1: (2.0, 4.0, 2.2), 2: (4.0, 8.0, 4.4)}
    results = [_result(d, 1, [2, 3], d + 1, *speeds[d], rank_sum=11) for d in range(3)]
    before = s.global_params["0.q.lora_A"].clone()
    agg = s.aggregate_round(1, results)
    # layer-wise mean over the devices that trained a layer (uniform weighting, eq. 17); untrained layers kept
    assert torch.allclose(s.global_params["2.q.lora_A"], torch.tensor([2.0]))
    assert torch.allclose(s.global_params["head.w"], torch.full((2,), 2.0))
    assert torch.equal(s.global_params["0.q.lora_A"], before)
    assert agg["devices_per_layer"] == {"0": 0, "1": 0, "2": 3, "3": 3}
    # mu = b / 2, beta = u / 11, t-hat = f: full-depth times 1 + 4 + 16 * 0.1 = 6.6, 13.2, 26.4
    est = s.estimator.estimates
    assert [round(est[d].completion_time(4, 16), 6) for d in range(3)] == [6.6, 13.2, 26.4]
    # gap k = ceil(4 * (26.4 - 6.6) / 26.4) = 3; depths 4 - ceil(3 (t - 6.6) / 19.8) = 4, 3, 1; the fill cannot
    # raise device 2 (depth 2 would take 4 + 8 + 11 * 0.4 = 16.4 s > t^h = 10.8 s) nor device 1 (13.2 s)
    tasks = s.configure_round(2, [0, 1, 2])
    assert {d: t.config.depth for d, t in tasks.items()} == {0: 4, 1: 3, 2: 1}
    assert s.last_decision.round_time == pytest.approx(10.8)
    assert tasks[2].config.ranks == {3: 6} and tasks[1].config.ranks == {1: 3, 2: 5, 3: 6}
    log = s.round_log(tasks)
    assert log["1"]["predicted_time_s"] == pytest.approx(2 + 3 * 2 + 14 * 0.2)


def test_a_task_and_a_result_survive_flower_messages():
    from legendfl.runtime.flower.messages import decode_result, decode_task, encode_result, encode_task

    task = DeviceTask(3, 7, {"5.q.lora_A": torch.randn(4, 3), "head.w": torch.arange(2.0)}, LoraLayout({5: 4}, 6),
                      "lora", 1e-3, local_terms=(RankTailPenalty(0.75, 0.01),))
    back, cfg, labels = decode_task(encode_task(task, {"rounds": 2}, ["neg", "pos"]))
    assert (back.device_id, back.round, back.method, back.lr, back.config) == (3, 7, "lora", 1e-3, task.config)
    assert back.local_terms == task.local_terms and cfg == {"rounds": 2} and labels == ["neg", "pos"]
    assert all(torch.equal(back.params[k], v) for k, v in task.params.items())
    adapter = DeviceTask(1, 2, {}, AdapterLayout(2, 16), "adapter")
    assert decode_task(encode_task(adapter, {}, []))[0].config == AdapterLayout(2, 16)

    work = DeviceWork(forward_flops=1.5, backward_flops=2.5, download_bytes=10, upload_bytes=20, trained_depth=1,
                      rank_sum=4, lora_upload_bytes=16, steps=3, layer_forward_flops=0.5,
                      trainable_forward_flops=0.25, trained_layers=1, num_layers=6, full=False)
    result = DeviceResult(3, 7, {"5.q.lora_A": torch.randn(4, 3)}, num_examples=12, num_tokens=300, num_steps=3,
                          train_loss=0.5, metrics={"tail_norm": 0.1}, work=work, timing=DeviceTiming(0.1, 0.2, 0.3, 0.4),
                          iterations=[work, DeviceWork(forward_flops=1.0, backward_flops=2.0, download_bytes=3, upload_bytes=4)])
    got, node = decode_result(encode_result(result, {"hostname": "h", "busy_s": 1.0}))
    assert node == {"hostname": "h", "busy_s": 1.0}
    assert (got.work, got.timing, got.metrics, got.num_tokens) == (work, result.timing, {"tail_norm": 0.1}, 300)
    assert got.iterations == result.iterations  # a split round's per-iteration work (core.split) survives too
    assert torch.equal(got.params["5.q.lora_A"], result.params["5.q.lora_A"])
    assert math.isclose(got.train_loss, 0.5)


def test_a_nodes_identity_must_name_its_device_examples_and_host():
    from legendfl.runtime.flower.messages import decode_identity, encode_identity

    good = {"device_id": 2, "num_examples": 40, "hostname": "h"}
    assert decode_identity(encode_identity(good)) == good
    for bad, field in [({"num_examples": 40, "hostname": "h"}, "device_id"), ({**good, "device_id": -1}, "device_id"),
                       ({**good, "num_examples": 0}, "num_examples"), ({**good, "num_examples": 1e9}, "num_examples"),
                       ({**good, "device_id": True}, "device_id"), ({**good, "hostname": None}, "hostname")]:
        with pytest.raises(ValueError, match=field):
            decode_identity(encode_identity(bad))


def test_an_unknown_local_term_or_method_is_refused_by_name():
    from legendfl.core.hooks import term_from_json
    from legendfl.engine.local_terms import implement
    from legendfl.methods.base import get_method

    with pytest.raises(ValueError, match="local term kind must be one of"):
        term_from_json({"kind": "dropout_schedule"})
    with pytest.raises(ValueError, match="not supported by client method 'adapter'"):
        implement(RankTailPenalty(), "adapter")
    with pytest.raises(ValueError, match="task method must be one of"):
        get_method("prefix-tuning")


@pytest.mark.slow
def test_a_fresh_process_reads_every_kind_of_task_config_and_term(tmp_path):
    """A Flower ClientApp process decodes its task before anything else is imported: the configs and terms that
    strategies define must be readable there (found by the fresh-clone suite: a per-message node refused them)."""
    import pickle
    import subprocess
    import sys

    from legendfl.runtime.flower.payloads import task_to_payload
    from legendfl.strategies.fedadapter import AdapterLayout
    from legendfl.strategies.hetlora import RankTailPenalty

    task = DeviceTask(0, 1, {}, AdapterLayout(2, 8), "adapter", local_terms=(RankTailPenalty(),))
    (tmp_path / "payload.pkl").write_bytes(pickle.dumps(task_to_payload(task, {}, [])))
    code = ("import pickle, sys; from legendfl.runtime.flower.payloads import task_from_payload; "
            "t = task_from_payload(pickle.load(open(sys.argv[1], 'rb')))[0]; print(t.config.kind, t.local_terms[0].kind)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "payload.pkl")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["adapter", "rank_tail_penalty"]
