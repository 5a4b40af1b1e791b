"""The Flower runtime's transport: tasks go to SuperNodes as messages, the round runs on the wall clock.

:class:`Federation` knows which SuperNode is which device (a ``query`` message asks each new node for its
``partition-id``) and exchanges messages with timeouts. :class:`FlowerTransport` is what the round loop
(``runtime/loop.py``) drives: one ``train`` message per configured device; replies until every node
answered or ``round-timeout-s`` passed; a node that did not answer (or answered with an error, or with a
reply that cannot be decoded or names another device) is missing.

Timing: a device's compute is what it measured (or, for a node that emulates a fleet device, that
device's cost-model timing); its download and upload are the server-measured round trip minus the node's
busy time, split by bytes. The round lasts as long as the server waited (``real`` clock).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from ...config import RunConfig
from ...core.split import SERVER_ID
from ...core.strategy import DeviceTask
from ...core.work import DeviceTiming
from ...fleet.virtual_clock import VirtualClock
from ..loop import ClockState, RoundOutcome
from .messages import QUERY, TRAIN, decode_identity, decode_result, encode_query, encode_task

log = logging.getLogger(__name__)


class Federation:
    """The SuperNodes of this run: which node is which device, and message exchange with timeouts."""

    def __init__(self, grid: Grid, cfg: RunConfig, label_names: list[str]) -> None:
        self.grid, self.cfg, self.label_names = grid, cfg, label_names
        self.node_of: dict[int, int] = {}  # device id -> node id
        self.identity: dict[int, dict[str, Any]] = {}
        self.refused: set[int] = set()  # nodes whose query failed or clashed

    def wait_for(self, count: int, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while len(set(self.grid.get_node_ids())) < count and time.monotonic() < deadline:
            time.sleep(1.0)
        have = len(set(self.grid.get_node_ids()))
        if have < count:
            log.warning("only %d of %d SuperNodes connected after %.0fs; going on with them", have, count, wait_s)

    def discover(self, timeout_s: float) -> None:
        """Query nodes not seen before for their device id."""
        known = set(self.node_of.values()) | self.refused
        new = sorted(set(self.grid.get_node_ids()) - known)
        if not new:
            return
        msgs = {n: Message(encode_query(self.cfg.to_json(), self.label_names), dst_node_id=n, message_type=QUERY) for n in new}
        replies, missing = self.exchange(msgs, timeout_s)
        for node, (reply, _) in sorted(replies.items()):
            try:
                ident = decode_identity(reply.content)
            except Exception as err:  # a node that cannot say who it is takes no part
                log.warning("node %s: malformed identity (%s: %s): ignored", node, type(err).__name__, str(err)[:200])
                self.refused.add(node)
                continue
            dev = ident["device_id"]
            if dev in self.node_of:
                log.warning("node %s says it is device %d, already node %s: ignored", node, dev, self.node_of[dev])
                self.refused.add(node)
                continue
            self.node_of[dev], self.identity[dev] = node, ident
            log.info("device %d = node %s on %s (%d examples%s)", dev, node, ident["hostname"], ident["num_examples"],
                     f", emulating fleet entry {ident['emulate_device']}" if ident.get("emulate_device") is not None else "")
        for node, reason in missing.items():
            log.warning("node %s did not say who it is (%s); it is asked again next round", node, reason)

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


class FlowerTransport(ClockState):
    runtime = "flower"
    clock_kind = "real"

    def __init__(self, fed: Federation, cfg: RunConfig, label_names: list[str], query_timeout_s: float,
                 round_timeout_s: float) -> None:
        self.fed, self.cfg, self.label_names = fed, cfg, label_names
        self.query_timeout_s, self.round_timeout_s = query_timeout_s, round_timeout_s
        self.clock = VirtualClock("real")
        self.offline: dict[int, str] = {}

    def partition_size(self, device_id: int) -> int:
        return int(self.fed.identity[device_id]["num_examples"])  # what the node said when it joined

    def participants(self, rnd: int) -> list[int]:
        fed = self.fed
        fed.discover(self.query_timeout_s)
        online = set(fed.grid.get_node_ids())
        present = sorted(d for d, n in fed.node_of.items() if n in online and d < self.cfg.num_devices)
        self.offline = {d: "offline: the SuperLink lost its heartbeat before the round" for d, n in fed.node_of.items()
                        if n not in online}
        if not present:
            raise RuntimeError(f"round {rnd}: no SuperNode is connected; nothing to train")
        return present

    def run_round(self, rnd: int, tasks: dict[int, DeviceTask]) -> RoundOutcome:
        if SERVER_ID in tasks:
            raise ValueError(f"strategy {self.cfg.strategy!r} runs split rounds (core.split), in which the server trains in "
                             f"every iteration; this runtime sends one task per node and round: run it in the simulator")
        fed, cfg_json = self.fed, self.cfg.to_json()
        msgs = {d: Message(encode_task(t, cfg_json, self.label_names), dst_node_id=fed.node_of[d],
                           message_type=TRAIN, group_id=str(rnd)) for d, t in tasks.items()}
        round_start = time.perf_counter()
        replies, missing = fed.exchange(msgs, self.round_timeout_s)
        missing.update(self.offline)
        round_time = time.perf_counter() - round_start  # the server waited this long, silent nodes included
        results, timings, rtts, extras = [], {}, {}, {}
        for d in sorted(replies):
            try:
                result, info = decode_result(replies[d][0].content)
                if result.device_id != d or not isinstance(info.get("hostname"), str):
                    raise ValueError(f"it names device {result.device_id}" if result.device_id != d else "no hostname")
                for key in ("busy_s", "setup_s", "train_s"):
                    float(info[key])
            except Exception as err:  # a reply we cannot read is a device that did not answer usefully
                missing[d] = f"malformed reply from node {fed.node_of[d]}: {type(err).__name__}: {err}"[:300]
                log.warning("round %d: device %d: %s", rnd, d, missing[d])
                continue
            rtt = replies[d][1]
            emulated = info.get("emulated")
            if emulated is None:  # compute as the node measured it; transfers as the server saw them
                download_s, upload_s = _transfer_split(rtt, info["busy_s"], tasks[d].download_bytes, result.upload_bytes)
                result.timing = DeviceTiming(download_s, result.timing.forward_s, result.timing.backward_s, upload_s)
                shown = {**result.timing.to_json(), "total_s": rtt}
            else:
                shown = {k: emulated[k] for k in ("download_s", "forward_s", "backward_s", "upload_s", "total_s")}
            shown["other_s"] = max(0.0, shown["total_s"] - sum(shown[k] for k in ("download_s", "forward_s", "backward_s", "upload_s")))
            timings[d] = shown
            rtts[d] = rtt
            extras[d] = {"node_id": str(fed.node_of[d]), "hostname": info["hostname"], "pid": info["pid"],
                         "kind": emulated["kind"] if emulated else info["hostname"], "mode": emulated["mode"] if emulated else "-",
                         "round_trip_s": round(rtt, 4), "setup_s": round(info["setup_s"], 4), "train_s": round(info["train_s"], 4),
                         "emulated": emulated}
            results.append(result)
        for d in missing:
            if d in fed.node_of:
                extras[d] = {"node_id": str(fed.node_of[d])}
        down = {d: t.download_bytes for d, t in tasks.items()}  # sent to every device, answered or not
        up = {r.device_id: r.upload_bytes for r in results}
        entry = self.clock.advance(rnd, rtts, down, up, round_time_s=round_time)
        return RoundOutcome(results, timings, entry.waiting_s, self.clock.record_fields(entry), extras, missing,
                            summary=f"answered {sorted(replies)}  missing {sorted(missing)}")
