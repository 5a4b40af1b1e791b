"""Full fine-tuning (FedNLP, Lin et al. 2022): every weight is trained locally and exchanged.

The server holds the whole model (backbone and head); every device downloads and uploads all of it, so a
round's traffic per device is twice the model size. Aggregation is FedAvg weighted by examples.
"""
from __future__ import annotations

import logging
from typing import Any

from ..core.aggregation import weighted_average
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec, Strategy
from .registry import register_strategy

log = logging.getLogger(__name__)


@register_strategy("full", help="full fine-tuning: every weight trained and exchanged, FedAvg")
class FullFineTuning(Strategy):
    STATE = ("global_params",)

    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        super().initialize(spec, device_ids)
        # weights, gradients and AdamW's two moments per parameter on every device, in fp32
        need_gb = 4 * spec.bytes_per_param * spec.base_param_count / 1e9
        if spec.decoder or need_gb > 2.0:
            log.warning("full fine-tuning trains every weight: about %.1f GB per device for weights, gradients and AdamW "
                        "state (%d parameters), before activations; LoRA strategies need a small fraction of it",
                        need_gb, spec.base_param_count)
        if spec.base_state is None:
            raise ValueError("full fine-tuning needs the backbone's weights in ModelSpec.base_state")
        self.global_params = {**{k: v.clone() for k, v in spec.base_state.items()},
                              **{k: v.clone() for k, v in spec.head.items()}}

    def configure_round(self, rnd: int, device_ids: list[int]) -> dict[int, DeviceTask]:
        return {d: DeviceTask(d, rnd, dict(self.global_params), None, "full", self.round_lr(rnd)) for d in device_ids}

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        if results:
            self.global_params = weighted_average([(float(r.num_examples), r.params) for r in results])
        return {"aggregated_devices": len(results)}

    def evaluation_task(self) -> DeviceTask:
        return DeviceTask(-1, 0, self.global_params, None, "full")

    def round_log(self, tasks: dict[int, DeviceTask]) -> dict[str, Any]:
        L = self.spec.num_layers
        return {str(d): {"depth": L, "trainable_params": sum(v.numel() for v in t.params.values())} for d, t in tasks.items()}
