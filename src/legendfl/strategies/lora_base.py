"""Shared machinery of LoRA strategies: a global set of per-layer LoRA tensors plus the head."""
from __future__ import annotations

from typing import Any

from ..core.aggregation import layerwise_average
from ..core.lora_layout import LoraLayout
from ..core.seeding import derive_seed
from ..core.strategy import DeviceResult, DeviceTask, ModelSpec, Strategy, Tensors, key_layer


class LoraStrategy(Strategy):
    """A strategy whose server holds global LoRA tensors for ``global_layout`` and a classification head.

    The head (e.g. BERT's ``classifier``) is trained by every device and averaged over all of them; it is
    part of every download and upload.
    """

    weighting: str = "examples"  # how results are weighted in the average: "examples" or "uniform"
    STATE = ("global_params",)

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.global_layout: LoraLayout | None = None
        self.global_params: Tensors = {}

    # subclasses decide the global layout
    def make_global_layout(self, spec: ModelSpec) -> LoraLayout:
        raise NotImplementedError

    def initialize(self, spec: ModelSpec, device_ids: list[int]) -> None:
        super().initialize(spec, device_ids)
        self.global_layout = self.make_global_layout(spec)
        self.global_params = {**spec.init_lora(self.global_layout, derive_seed(self.seed, "init")),
                              **{k: v.clone() for k, v in spec.head.items()}}

    def params_for(self, layout: LoraLayout) -> Tensors:
        """The global tensors of ``layout``'s layers plus the head (LEGEND's assignment, eq. 19)."""
        assert self.global_layout is not None
        for layer, rank in layout.ranks.items():
            if self.global_layout.ranks.get(layer) != rank:
                raise ValueError(f"layer {layer}: rank {rank} does not match the global rank "
                                 f"{self.global_layout.ranks.get(layer)}")
        chosen = set(layout.layers)
        return {k: v.clone() for k, v in self.global_params.items()
                if key_layer(k) is None or key_layer(k) in chosen}

    def task(self, rnd: int, device_id: int, layout: LoraLayout) -> DeviceTask:
        return DeviceTask(device_id=device_id, round=rnd, params=self.params_for(layout), config=layout,
                          method="lora", lr=self.round_lr(rnd))

    def weight(self, result: DeviceResult) -> float:
        return float(result.num_examples) if self.weighting == "examples" else 1.0

    def aggregate_round(self, rnd: int, results: list[DeviceResult]) -> dict[str, Any]:
        """Layer-wise average (eq. 17); with every device on every layer this is exactly FedAvg."""
        if not results:
            return {"aggregated_devices": 0}
        updates = [(self.weight(r), r.params) for r in results]
        self.global_params = layerwise_average(updates, previous=self.global_params)
        per_layer = {}
        for r in results:
            for layer in {key_layer(k) for k in r.params} - {None}:
                per_layer[layer] = per_layer.get(layer, 0) + 1
        return {"aggregated_devices": len(results),
                "devices_per_layer": {str(l): per_layer.get(l, 0) for l in range(self.spec.num_layers)}}

    def current_layout(self) -> LoraLayout:
        """The global LoRA's layout now (what is evaluated and exported): ``global_layout`` unless a strategy's
        rounds change it (FlexLoRA's global rank)."""
        assert self.global_layout is not None
        return self.global_layout

    def evaluation_task(self) -> DeviceTask:
        return DeviceTask(device_id=-1, round=0, params=dict(self.global_params), config=self.current_layout())

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        if self.global_layout is not None and self.spec is not None:
            layout = self.current_layout()
            out["global_layout"] = layout.fields_json()
            out["global_lora_params"] = self.spec.lora_param_count(layout)
        return out
