"""FlexLoRA (strategies/flexlora.py): the full-size average of the devices' B A, redistributed by SVD."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_BERT, cli

from legendfl.core.strategy import DeviceResult, ModelSpec, lora_ranks
from legendfl.strategies.flexlora import FlexLoRA, FlexLoRAOptions, factorize, full_size_update
from legendfl.strategies.hetlora import truncate

KEY = "0.q."


def _device(rank: int, start: float) -> dict[str, torch.Tensor]:
    """A device's pair of rank ``rank`` on a 4 x 3 module, with easy entries (B: 4 x r, A: r x 3)."""
    a = torch.arange(rank * 3, dtype=torch.float32).reshape(rank, 3) / 10 + start
    b = torch.arange(4 * rank, dtype=torch.float32).reshape(4, rank) / 7 - start
    return {KEY + "lora_A": a, KEY + "lora_B": b}


def test_the_full_size_update_and_its_svd_redistribution_by_hand():
    """Three devices of ranks 1, 2 and 3 holding 1, 2 and 3 examples: M = (1 B1A1 + 2 B2A2 + 3 B3A3) / 6; the
    server's factors (rank 6 >= rank M) multiply back to M; truncated to r they give M's best rank-r approximation,
    whose error is the norm of the dropped singular values (Eckart-Young)."""
    devices = [_device(1, 0.5), _device(2, -0.25), _device(3, 1.0)]
    weights = [1.0, 2.0, 3.0]
    by_hand = sum(w * (d[KEY + "lora_B"].double() @ d[KEY + "lora_A"].double()) for w, d in zip(weights, devices)) / 6
    m = full_size_update(list(zip(weights, devices)))[KEY]
    assert torch.allclose(m, by_hand, rtol=0, atol=1e-12)
    factors = factorize({KEY: m}, 6)
    a, b = factors[KEY + "lora_A"], factors[KEY + "lora_B"]
    assert a.shape == (3, 3) and b.shape == (4, 3)  # rank capped by the module's size (min(4, 3))
    assert torch.allclose(b @ a, m.float(), rtol=0, atol=1e-6 * float(m.abs().max()))
    singular = torch.linalg.svdvals(m)
    assert torch.allclose(a.double() @ a.double().T, torch.eye(3, dtype=torch.float64), atol=1e-6)  # A: orthonormal rows
    for r in (1, 2):
        part = truncate(factors, r)
        approx = part[KEY + "lora_B"].double() @ part[KEY + "lora_A"].double()
        error = torch.linalg.matrix_norm(m - approx) ** 2
        assert float(error) == pytest.approx(float((singular[r:] ** 2).sum()), rel=1e-5)
        u, s, vh = torch.linalg.svd(m)
        assert torch.allclose(approx, (u[:, :r] * s[:r]) @ vh[:r], atol=1e-6)  # numpy's rank-r truncation
    with pytest.raises(ValueError, match="weights must sum"):
        full_size_update([(0.0, devices[0])])


def test_a_round_redistributes_the_global_update_to_each_devices_rank():
    spec = ModelSpec(num_layers=2, linear_modules={"q": (6, 5)}, head={"head.w": torch.zeros(2)}, hidden_size=5,
                     base_param_count=0)
    s = FlexLoRA(FlexLoRAOptions(r_min=1, r_max=3), seed=0)
    s.initialize(spec, [0, 1, 2])
    tasks = s.configure_round(1, [0, 1, 2])
    assert {d: t.config.ranks[0] for d, t in tasks.items()} == {0: 2, 1: 2, 2: 2}  # the middle rank before any report
    gen = torch.Generator().manual_seed(0)
    results = [DeviceResult(d, 1, {k: v + torch.randn(v.shape, generator=gen) for k, v in t.params.items()},
                            num_examples=n) for (d, t), n in zip(tasks.items(), (1, 3, 4))]
    metrics = s.aggregate_round(1, results)
    assert metrics == {"aggregated_devices": 3, "global_rank": 5}  # sum of ranks 6, capped by min(6, 5)
    for layer in (0, 1):
        stem = f"{layer}.q."
        m = sum(w * r.params[stem + "lora_B"].double() @ r.params[stem + "lora_A"].double()
                for w, r in zip((1, 3, 4), results)) / 8
        g = s.global_params
        assert torch.allclose((g[stem + "lora_B"] @ g[stem + "lora_A"]).double(), m, atol=1e-5)
    head = sum(w * r.params["head.w"] for w, r in zip((1, 3, 4), results)) / 8
    assert torch.allclose(s.global_params["head.w"], head)
    assert lora_ranks(s.evaluation_task().params) == {0: 5, 1: 5} and s.evaluation_task().config.ranks == {0: 5, 1: 5}
    again = s.configure_round(2, [0, 1, 2])
    for d, t in again.items():  # each device gets the first r of the global factors: M's best rank-r approximation
        r = t.config.ranks[0]
        assert lora_ranks(t.params) == {0: r, 1: r}
        assert torch.equal(t.params["0.q.lora_A"], s.global_params["0.q.lora_A"][:r])
        assert t.download_bytes == DeviceResult(d, 2, t.params, num_examples=1).upload_bytes  # what it gets equals what it sends back
    with pytest.raises(ValueError, match=r"flexlora.r_min \(4\) must be <= flexlora.r_max \(3\)"):
        FlexLoRAOptions(r_min=4, r_max=3)


@pytest.mark.slow
def test_a_flexlora_run_records_each_devices_rank_and_exports_the_global_update(tmp_path):
    out = tmp_path / "flex"
    r = cli("run", "--model", TINY_BERT, "--strategy", "flexlora", "--num-devices", "4", "--rounds", "3",
            "--max-local-steps", "2", "--max-examples-per-device", "32", "--max-dev-examples", "64", "--threads", "1",
            "--out-dir", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(records) == 3
    last = records[-1]
    ranks = {d: v["ranks"][0] for d, v in last["devices"].items()}
    assert min(ranks.values()) == 2 and max(ranks.values()) == 8  # spread by speed after the first reports
    assert last["aggregation"]["global_rank"] == sum(ranks.values())
    for v in last["devices"].values():
        assert v["download_bytes"] == v["upload_bytes"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == sum(ranks.values())
