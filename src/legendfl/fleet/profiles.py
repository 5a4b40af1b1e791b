"""Measured per-batch latency profiles of devices (the ``profile`` cost model, see ``cost_model``).

A profile is what one device measured for one reference model and batch: per-layer forward time, per
trained layer backward time, per traversed frozen layer backward time, and a fixed cost per step. In a
fleet file it is a table: ``[profile]`` for every device type, or ``profile = {...}`` on one device type.

    [profile]
    source = "where the numbers come from"
    reference_hidden = 768          # the reference model's layer shape (BERT-style block)
    reference_intermediate = 3072
    reference_batch = 4             # sequences per batch
    reference_seq_len = 64          # padded tokens per sequence
    forward_ms_per_layer = 1.4
    backward_ms_per_trained_layer = 5.0
    backward_ms_per_frozen_layer = 5.0   # optional; default: the trained-layer figure
    step_ms = 0.0                        # optional
    reference_gflops = 2000.0            # throughput (fleet units) of the mode the profile was measured in

``legendfl profile`` measures these on the machine it runs on and prints such an entry.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.strategy import ModelSpec
from ..core.flops import layer_forward_flops

REQUIRED = ("reference_hidden", "reference_intermediate", "reference_batch", "reference_seq_len",
            "forward_ms_per_layer", "backward_ms_per_trained_layer", "reference_gflops")
OPTIONAL = ("source", "backward_ms_per_frozen_layer", "step_ms")


def reference_layer_flops(hidden: int, intermediate: int, batch: int, seq_len: int) -> float:
    """One BERT-style layer's forward FLOPs (q, k, v, o, two feed-forward matrices, attention) on a batch."""
    spec = ModelSpec(1, {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "o": (hidden, hidden),
                         "up": (hidden, intermediate), "down": (intermediate, hidden)}, {}, hidden, 0)
    return layer_forward_flops(spec, batch * seq_len, seq_len)


@dataclass(frozen=True)
class LatencyProfile:
    forward_ms_per_layer: float
    backward_ms_per_trained_layer: float
    backward_ms_per_frozen_layer: float
    step_ms: float
    reference_layer_flops: float  # one layer's forward FLOPs on the reference batch
    reference_gflops: float  # fleet throughput of the mode it was measured in (scales to other modes)
    source: str = ""

    @classmethod
    def from_table(cls, table: dict, where: str) -> "LatencyProfile":
        """From a fleet file's profile table; ``where`` names it in errors (e.g. ``device_types[0].profile``)."""
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table with keys {list(REQUIRED)}")
        unknown = sorted(set(table) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(REQUIRED + OPTIONAL)}")
        for key in REQUIRED:
            if key not in table:
                raise ValueError(f"{where}.{key} is missing (required: {list(REQUIRED)})")
        values = {}
        for key in REQUIRED + OPTIONAL[1:]:
            if key not in table:
                continue
            v = table[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise ValueError(f"{where}.{key} must be a finite number >= 0, got {v!r}")
            values[key] = float(v)
        for key in ("reference_hidden", "reference_intermediate", "reference_batch", "reference_seq_len",
                    "forward_ms_per_layer", "reference_gflops"):
            if values[key] <= 0:
                raise ValueError(f"{where}.{key} must be > 0, got {table[key]!r}")
        flops = reference_layer_flops(int(values["reference_hidden"]), int(values["reference_intermediate"]),
                                      int(values["reference_batch"]), int(values["reference_seq_len"]))
        trained = values["backward_ms_per_trained_layer"]
        return cls(values["forward_ms_per_layer"], trained, values.get("backward_ms_per_frozen_layer", trained),
                   values.get("step_ms", 0.0), flops, values["reference_gflops"], str(table.get("source", "")))

    def batch_ms(self, depth: int, num_layers: int, layer_flops: float | None = None) -> float:
        """Per-batch training latency at LoRA depth ``depth`` (top layers), at the reference mode.

        ``layer_flops`` is one layer's forward FLOPs on the batch (default: the reference batch).
        """
        scale = (layer_flops or self.reference_layer_flops) / self.reference_layer_flops
        return self.step_ms + scale * (num_layers * self.forward_ms_per_layer + depth * self.backward_ms_per_trained_layer)


def device_type_entry(name: str, fitted: dict, comment: str = "", count: int = 1) -> str:
    """A ``[[device_types]]`` entry with its own measured profile, to paste into a fleet file.

    ``fitted`` holds the profile keys (``legendfl profile`` fits them); its ``reference_gflops`` is also the
    entry's single mode for the ``flops`` cost model (the forward pass's FLOPs over its measured time).
    """
    keys = [k for k in REQUIRED + OPTIONAL if k in fitted and k != "source"]
    values = ", ".join(f"{k} = {fitted[k]:.6g}" if isinstance(fitted[k], float) else f"{k} = {fitted[k]}" for k in keys)
    source = str(fitted.get("source", "measured by legendfl profile")).replace('"', "'")
    lines = [f"# {line}" for line in comment.splitlines()] + [
        "[[device_types]]", f'name = "{name}"', f"count = {count}",
        f"modes = [{fitted['reference_gflops']:.6g}]  # GFLOP/s for the flops cost model; other modes: scale this",
        f'profile = {{ source = "{source}", {values} }}', ""]
    return "\n".join(lines)
