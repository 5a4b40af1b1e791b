"""``legendfl profile``: the entry it writes is a usable fleet file and predicts this CPU's cost of depth."""
import pytest

from legendfl.core.lora_layout import LoraLayout
from legendfl.fleet.devices import load_fleet
from legendfl.models.profiling import fixed_batches, time_layout
from legendfl.models.trainer import TokenizedData
from conftest import cli

NETWORK = '\n[network]\ngroups = [{ distance_m = 2, uplink_mbps = 10.0, downlink_mbps = 20.0 }]\n'


def test_profile_entry_predicts_a_fresh_measurement_of_depth_cost(tmp_path, backbone, sst2):
    entry = tmp_path / "entry.toml"
    r = cli("profile", "--batches", "8", "--threads", "2", "--out", str(entry), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = entry.read_text()
    assert "[[device_types]]" in text and "per-batch training latency (ms) by LoRA depth" in text
    fleet_file = tmp_path / "mine.toml"
    fleet_file.write_text('name = "mine"\ndescription = "this CPU"\n' + text + NETWORK)
    fleet = load_fleet(str(fleet_file), 2)
    profile = fleet.devices[0].profile
    assert profile is not None and fleet.devices[0].modes_gflops[0] == pytest.approx(profile.reference_gflops)
    L = backbone.num_layers
    predicted = profile.batch_ms(L, L) / profile.batch_ms(1, L)
    # a fresh measurement, same shapes (batch 16 x 64, rank 8, bf16 autocast); depths alternate, and the least
    # disturbed of five repetitions counts: on this shared 2-core VM one repetition can run 20% slow (measured
    # 267-316 ms for the same depth-6 batches), which a median of three still caught now and then
    batches = fixed_batches(TokenizedData(backbone.tokenizer, sst2.train[:2000], 64), 16, 64, 7, seed=1)
    times = {1: [], L: []}
    for _ in range(5):
        for k in (1, L):
            times[k].append(time_layout(backbone, LoraLayout.top(k, [8] * L), batches)["step_ms"])
    fresh = {k: min(v) for k, v in times.items()}
    assert predicted == pytest.approx(fresh[L] / fresh[1], rel=0.15)
    assert predicted > 1.2  # depth costs something on this CPU too


def test_profile_refuses_bad_sizes():
    r = cli("profile", "--batch-size", "0", timeout=120)
    assert r.returncode == 2 and "--batch-size must be a positive integer" in r.stderr and "Traceback" not in r.stderr
