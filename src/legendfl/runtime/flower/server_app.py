"""The Flower ServerApp: drives any of our strategies, unchanged, over SuperNodes.

Per run: load the model (its shapes for the strategy, the head, the dev set for evaluation); wait for
``min-nodes`` SuperNodes; ask each new node who it is (a ``query`` message: its ``partition-id`` is the
device id the strategy knows, its data size, its machine); then every round

1. ``strategy.configure_round`` gives one task per connected device (LEGEND: its own depth and layers);
2. one ``train`` message per node carries exactly that device's tensors and settings;
3. replies are collected until every node answered or ``round-timeout-s`` passed; a node that did not
   answer (or answered with an error) is recorded as missing and the round goes on without it;
4. each device's capacity report is its measured backward time per layer and forward time, and the upload
   time per unit rank the server measures (round trip minus the node's own busy time, its upload share by
   bytes); ``strategy.aggregate_round`` folds the results in; the server evaluates the global model.

Records (``rounds.jsonl``), summary, adapter and figures have the in-process runtime's format; times are
real wall-clock seconds (``clock: "real"``), bytes are the tensors exchanged.
"""
from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from ...config import RunConfig, load_config_file
from .messages import QUERY, TRAIN, decode_identity, decode_result, encode_query, encode_task

app = ServerApp()


@dataclass(frozen=True)
class FederationSettings:
    """The Flower app's run config (``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``)."""

    config_file: str = ""  # legendfl run options (TOML/YAML) on the SuperLink's machine; "" = defaults
    options: str = ""  # TOML lines that override the file, e.g. "rounds = 2\nnum_devices = 3"
    out_dir: str = ""  # where records go on the SuperLink's machine; "" = the run config's out_dir
    min_nodes: int = 0  # SuperNodes to wait for before round 1; 0 = num_devices
    node_wait_s: float = 300.0  # how long to wait for them
    query_timeout_s: float = 120.0  # how long a node may take to say who it is
    round_timeout_s: float = 600.0  # how long a round waits for replies before going on without a node

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "FederationSettings":
        names = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(names))
        if unknown:
            raise ValueError(f"unknown run-config keys {unknown}; allowed: {sorted(names)}")
        values = {}
        for key, value in run_config.items():
            f = names[key]
            kind = {"str": str, "int": int, "float": (int, float)}[f.type]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"run-config {key} must be a {f.type}, got {value!r}")
            if f.type != "str" and value < 0:
                raise ValueError(f"run-config {key} must be >= 0, got {value!r}")
            values[f.name] = float(value) if f.type == "float" else value
        return cls(**values)

    def run_config(self) -> RunConfig:
        data = load_config_file(self.config_file) if self.config_file else {}
        if self.options:
            try:
                data.update(tomllib.loads(self.options))
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"run-config options must be TOML lines (key = value): {err}") from None
        if self.out_dir:
            data["out_dir"] = self.out_dir
        known = {f.name for f in fields(RunConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run options {unknown} in run-config options; allowed: {sorted(known)}")
        return RunConfig(**data)


class Federation:
    """The SuperNodes of this run: which node is which device, and message exchange with timeouts."""

    def __init__(self, grid: Grid, cfg: RunConfig, label_names: list[str], progress: Callable[[str], None]) -> None:
        self.grid, self.cfg, self.label_names, self.progress = grid, cfg, label_names, progress
        self.node_of: dict[int, int] = {}  # device id -> node id
        self.identity: dict[int, dict[str, Any]] = {}
        self.refused: set[int] = set()  # nodes whose query failed or clashed

    def wait_for(self, count: int, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while len(set(self.grid.get_node_ids())) < count and time.monotonic() < deadline:
            time.sleep(1.0)
        have = len(set(self.grid.get_node_ids()))
        if have < count:
            self.progress(f"only {have} of {count} SuperNodes connected after {wait_s:.0f}s; going on with them")

    def discover(self, timeout_s: float) -> None:
        """Query nodes not seen before for their device id."""
        known = set(self.node_of.values()) | self.refused
        new = sorted(set(self.grid.get_node_ids()) - known)
        if not new:
            return
        msgs = {n: Message(encode_query(self.cfg.to_json(), self.label_names), dst_node_id=n, message_type=QUERY) for n in new}
        replies, missing = self.exchange(msgs, timeout_s)
        for node, (reply, _) in sorted(replies.items()):
            ident = decode_identity(reply.content)
            dev = int(ident["device_id"])
            if dev in self.node_of:
                self.progress(f"node {node} says it is device {dev}, already node {self.node_of[dev]}: ignored")
                self.refused.add(node)
                continue
            self.node_of[dev], self.identity[dev] = node, ident
            self.progress(f"device {dev} = node {node} on {ident['hostname']} ({ident['num_examples']} examples"
                          + (f", emulating fleet entry {ident['emulate_device']}" if ident.get("emulate_device") is not None else "")
                          + ")")
        for node, reason in missing.items():
            self.progress(f"node {node} did not say who it is ({reason}); it is asked again next round")

    def exchange(self, messages: dict[Any, Message], timeout_s: float
                 ) -> tuple[dict[Any, tuple[Message, float]], dict[Any, str]]:
        """Send one message per key; replies with their round-trip seconds, and why the others are missing."""
        keys = list(messages)
        start = time.monotonic()
        ids = list(self.grid.push_messages([messages[k] for k in keys]))
        key_of = dict(zip(ids, keys))
        pending = set(ids)
        replies: dict[Any, tuple[Message, float]] = {}
        missing: dict[Any, str] = {}
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                if reply.has_error():
                    missing[key_of[mid]] = f"error {reply.error.code}: {reply.error.reason}"
                else:
                    replies[key_of[mid]] = (reply, time.monotonic() - start)
            if not pending or time.monotonic() - start > timeout_s:
                break
            time.sleep(0.25)
        for mid in pending:
            missing[key_of[mid]] = f"no reply within {timeout_s:.0f}s"
        return replies, missing


def _transfer_split(rtt: float, busy_s: float, download_bytes: int, upload_bytes: int) -> tuple[float, float]:
    """Download and upload seconds of one reply: its round trip minus the node's busy time, split by bytes."""
    comm = max(0.0, rtt - busy_s)
    total = download_bytes + upload_bytes
    upload_s = comm * upload_bytes / total if total else 0.0
    return comm - upload_s, upload_s


def _device_log(dev: int, node: int, result, info: dict, rtt: float, transfer: tuple[float, float], round_time: float,
                task, config_log: dict) -> dict:
    """One device's line of the round record; times split as the in-process records split them."""
    emulated = info.get("emulated")
    timing = ({k: emulated[k] for k in ("download_s", "forward_s", "backward_s", "upload_s", "total_s")} if emulated else
              {"download_s": transfer[0], "forward_s": result.measured_forward_s,
               "backward_s": result.measured_backward_s, "upload_s": transfer[1], "total_s": rtt})
    timing["other_s"] = max(0.0, timing["total_s"] - sum(timing[k] for k in ("download_s", "forward_s", "backward_s", "upload_s")))
    return {"node_id": str(node), "hostname": info["hostname"], "pid": info["pid"], **{k: round(v, 4) for k, v in timing.items()},
            "kind": emulated["kind"] if emulated else info["hostname"], "mode": emulated["mode"] if emulated else "-",
            "round_trip_s": round(rtt, 4), "setup_s": round(info["setup_s"], 4), "train_s": round(info["train_s"], 4),
            "waiting_s": round(round_time - rtt, 4), "emulated": emulated, "examples": result.num_examples,
            "tokens": result.num_tokens, "forward_flops": result.forward_flops, "backward_flops": result.backward_flops,
            "download_bytes": task.download_bytes, "upload_bytes": result.upload_bytes,
            "train_loss": round(result.train_loss, 5), "trainable_params": int(sum(v.numel() for v in task.params.values())),
            **config_log.get(str(dev), {})}


def run_federation(grid: Grid, cfg: RunConfig, settings: FederationSettings,
                   progress: Callable[[str], None] = print) -> list[dict]:
    """Run ``cfg.rounds`` rounds of ``cfg.strategy`` over the SuperNodes behind ``grid``."""
    import torch

    from ...data.run_data import load_run_task, server_validation
    from ...models.backbone import load_backbone
    from ...models.trainer import TokenizedData, TrainConfig
    from ...runner import write_outputs
    from ...strategies import build_strategy
    from .. import executors

    wall0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_data = load_run_task(cfg)
    backbone = load_backbone(cfg.model, task_data.num_labels, cfg.seed, cfg.device)
    dev = TokenizedData(backbone.tokenizer, task_data.dev[: cfg.max_dev_examples], cfg.max_length)
    held = server_validation(cfg, task_data)
    validation = TokenizedData(backbone.tokenizer, [task_data.train[i] for i in held], cfg.max_length) if held else None
    tcfg = TrainConfig.from_run(cfg)
    strategy = build_strategy(cfg)
    strategy.initialize(backbone.spec, list(range(cfg.num_devices)))
    (out / "config.json").write_text(json.dumps({**cfg.to_json(), "runtime": "flower",
                                                 "federation": settings.__dict__}, indent=2))
    fed = Federation(grid, cfg, task_data.label_names, progress)
    fed.wait_for(settings.min_nodes or cfg.num_devices, settings.node_wait_s)
    records: list[dict] = []
    (out / "rounds.jsonl").write_text("")
    clock = traffic_down = traffic_up = 0
    for rnd in range(1, cfg.rounds + 1):
        fed.discover(settings.query_timeout_s)
        online = set(grid.get_node_ids())
        present = sorted(d for d, n in fed.node_of.items() if n in online and d < cfg.num_devices)
        offline = {d: "offline: the SuperLink lost its heartbeat before the round" for d, n in fed.node_of.items()
                   if n not in online}
        if not present:
            raise RuntimeError(f"round {rnd}: no SuperNode is connected; nothing to train")
        tasks = strategy.configure_round(rnd, present)
        msgs = {d: Message(encode_task(t, cfg.to_json(), task_data.label_names), dst_node_id=fed.node_of[d],
                           message_type=TRAIN, group_id=str(rnd)) for d, t in tasks.items()}
        round_start = time.perf_counter()
        replies, missing = fed.exchange(msgs, settings.round_timeout_s)
        missing.update(offline)
        round_time = time.perf_counter() - round_start  # the server waited this long, silent nodes included
        results, infos, transfers = [], {}, {}
        for d in sorted(replies):
            result, info = decode_result(replies[d][0].content)
            transfers[d] = _transfer_split(replies[d][1], info["busy_s"], tasks[d].download_bytes, result.upload_bytes)
            if info.get("emulated") is None and result.report is not None:
                work = executors.work_of(tasks[d], result, backbone.num_layers)
                upload_s = transfers[d][1]
                lora_upload_s = upload_s * work.lora_upload_bytes / result.upload_bytes if result.upload_bytes else 0.0
                result.report.upload_time_per_rank = lora_upload_s / work.rank_sum if work.rank_sum else 0.0
            results.append(result)
            infos[d] = info
        agg = strategy.aggregate_round(rnd, results) if results else {"skipped": "no device answered"}
        candidates = strategy.candidate_evaluations(rnd)
        if candidates:
            if validation is None:
                raise ValueError(f"validation_examples must be > 0 for strategy {strategy.name!r} (it compares candidate models)")
            scores = {name: executors.evaluate(t, backbone, validation, tcfg) for name, t in candidates.items()}
            agg.update(strategy.receive_evaluations(rnd, scores))
        config_log = strategy.round_log(tasks)
        devices_log = {str(r.device_id): _device_log(r.device_id, fed.node_of[r.device_id], r, infos[r.device_id],
                                                     replies[r.device_id][1], transfers[r.device_id], round_time,
                                                     tasks[r.device_id], config_log)
                       for r in results}
        down = sum(tasks[d].download_bytes for d in tasks)
        up = sum(r.upload_bytes for r in results)
        clock += round_time
        traffic_down += down
        traffic_up += up
        waits = [v["waiting_s"] for v in devices_log.values()]
        rec = {"round": rnd, "strategy": strategy.name, "runtime": "flower", "clock": "real", "lr": strategy.round_lr(rnd),
               "virtual_time_s": clock, "round_time_s": round_time, "mean_waiting_s": sum(waits) / len(waits) if waits else 0.0,
               "round_downlink_bytes": down, "round_uplink_bytes": up, "traffic_bytes": traffic_down + traffic_up,
               "downlink_bytes": traffic_down, "uplink_bytes": traffic_up, "accuracy": None, "eval_loss": None,
               "aggregation": agg, "devices": devices_log,
               "missing": [{"device": d, "node_id": str(fed.node_of[d]), "reason": why} for d, why in sorted(missing.items())]}
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            ev = executors.evaluate(strategy.evaluation_task(), backbone, dev, tcfg)
            rec["accuracy"], rec["eval_loss"] = ev["accuracy"], ev["loss"]
        records.append(rec)
        with (out / "rounds.jsonl").open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        acc = f"{rec['accuracy']:.4f}" if rec["accuracy"] is not None else "  -   "
        depths = sorted(v.get("depth", 0) for v in devices_log.values())
        progress(f"[{strategy.name}/flower] round {rnd}/{cfg.rounds}  acc {acc}  round {round_time:.1f}s  "
                 f"answered {sorted(replies)}  missing {sorted(missing)}  depths {depths}  "
                 f"traffic {rec['traffic_bytes'] / 1e6:.2f} MB")
    write_outputs(cfg, strategy, backbone, records, out, task_data.label_names, time.perf_counter() - wall0,
                  runtime="flower", devices={str(d): fed.identity[d] for d in sorted(fed.identity)})
    progress(f"records, summary and adapter in {out.resolve()}")
    return records


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = FederationSettings.from_run_config(dict(context.run_config))
    run_federation(grid, settings.run_config(), settings, progress=lambda line: print(line, flush=True))
