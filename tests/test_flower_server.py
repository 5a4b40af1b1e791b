"""The Flower ServerApp's round loop against an in-process grid: real ClientApp handlers answer real Flower
messages without a SuperLink. A restarted ServerApp resumes from its checkpoint to the same global model;
a node that sends a corrupted tensor is rejected exactly like a simulated device, and the global model
equals the run in which that node never answered."""
import json
from types import SimpleNamespace

import pytest
from conftest import TINY_BERT
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from legendfl.config import RunConfig
from legendfl.runtime.flower import client_app
from legendfl.runtime.flower.messages import decode_result, encode_result
from legendfl.runtime.flower.server_app import FederationSettings, run_federation

pytestmark = pytest.mark.xdist_group("flower_server")  # one worker for the module (pytest -n)

OPTIONS = {"model": TINY_BERT, "num_devices": 3, "rounds": 3, "max_examples_per_device": 24, "max_dev_examples": 32, "max_length": 32,
           "batch_size": 8, "max_local_steps": 2, "lr": 2e-3, "fixed_depths": [6, 4, 2], "threads": 1}


class Crash(Exception):
    pass


class InProcessGrid:
    """Flower's grid, in process: node ``n`` is device ``devices[n]``; its ClientApp handlers answer directly.
    ``corrupt``: device -> function applied to its reply's result; ``silent``: devices that never answer;
    ``crash_in_round``: the server process 'dies' when it sends that round's train messages."""

    def __init__(self, devices, corrupt=None, silent=(), crash_in_round=None):
        self.devices, self.corrupt, self.silent, self.crash_in_round = devices, corrupt or {}, set(silent), crash_in_round
        self.sent, self.replies = {}, {}
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def get_node_ids(self):
        return list(self.devices)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = f"m{len(self.sent)}"
            self.sent[mid] = msg
            ids.append(mid)
            if msg.metadata.message_type == "train" and self.crash_in_round and msg.metadata.group_id == str(self.crash_in_round):
                raise Crash(f"server killed in round {self.crash_in_round}")
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            msg = self.sent[mid]
            node = msg.metadata.dst_node_id
            dev = self.devices[node]
            if dev in self.silent and msg.metadata.message_type == "train":
                continue
            context = Context(run_id=1, node_id=node, node_config={"partition-id": dev, "threads": 1},
                              state=RecordDict(), run_config={})
            handler = client_app.query if msg.metadata.message_type == "query" else client_app.train
            content = handler(msg, context).content
            if msg.metadata.message_type == "train" and dev in self.corrupt:
                result, node_info = decode_result(content)
                self.corrupt[dev](result)
                content = encode_result(result, node_info)
            out.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid), has_error=lambda: False,
                                       content=content))
        return out


def _settings(out, **kw):
    return FederationSettings(out_dir=str(out), node_wait_s=1.0, query_timeout_s=30.0, round_timeout_s=1.0, **kw)


def _cfg(out):
    return RunConfig.from_sources(OPTIONS, {"out_dir": str(out)})


def _adapter(out):
    return (out / "adapter" / "adapter_model.safetensors").read_bytes()


def _records(out):
    return [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_restarted_server_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    whole = tmp_path / "whole"
    run_federation(InProcessGrid({11: 0, 12: 1, 13: 2}), _cfg(whole), _settings(whole))
    cut = tmp_path / "cut"
    with pytest.raises(Crash):
        run_federation(InProcessGrid({11: 0, 12: 1, 13: 2}, crash_in_round=3), _cfg(cut), _settings(cut))
    assert len(_records(cut)) == 2 and (cut / "checkpoint.pt").exists()
    # a restart with other settings is refused, naming them; one without resume does not write into the run
    with pytest.raises(ValueError, match=r"other settings \(differing: .*model.*num_devices.*rounds"):
        run_federation(InProcessGrid({21: 0, 22: 1, 23: 2}), RunConfig(out_dir=str(cut)), _settings(cut, resume=1))
    with pytest.raises(ValueError, match="already holds files"):
        run_federation(InProcessGrid({21: 0, 22: 1, 23: 2}), _cfg(cut), _settings(cut))
    assert len(_records(cut)) == 2 and (cut / "checkpoint.pt").exists()
    # the restarted server: new node ids (the nodes reconnected), the same settings, from its checkpoint
    run_federation(InProcessGrid({21: 0, 22: 1, 23: 2}), _cfg(cut), _settings(cut, resume=1))
    a, b = _records(whole), _records(cut)
    assert [r["round"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["accuracy"] == y["accuracy"] and x["eval_loss"] == y["eval_loss"] and x["aggregation"] == y["aggregation"]
        assert {d: v["train_loss"] for d, v in x["devices"].items()} == {d: v["train_loss"] for d, v in y["devices"].items()}
    assert _adapter(whole) == _adapter(cut) and not (cut / "checkpoint.pt").exists()


def _nan(result):
    key = next(k for k in result.params if "lora_B" in k)
    result.params[key][0, 0] = float("nan")


@pytest.mark.slow
def test_a_node_sending_a_corrupted_tensor_is_rejected_like_a_node_that_never_answered(tmp_path):
    poisoned, absent = tmp_path / "poisoned", tmp_path / "absent"
    run_federation(InProcessGrid({11: 0, 12: 1, 13: 2}, corrupt={1: _nan}), _cfg(poisoned), _settings(poisoned))
    run_federation(InProcessGrid({11: 0, 12: 1, 13: 2}, silent={1}), _cfg(absent), _settings(absent))
    for rec in _records(poisoned):
        assert [(r["device"], "NaN" in r["reason"]) for r in rec["rejected"]] == [(1, True)]
    for rec in _records(absent):
        assert [m["device"] for m in rec["missing"]] == [1] and rec["rejected"] == []
    assert [r["accuracy"] for r in _records(poisoned)] == [r["accuracy"] for r in _records(absent)]
    assert _adapter(poisoned) == _adapter(absent)
