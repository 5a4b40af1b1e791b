"""legendfl: federated fine-tuning of language models on heterogeneous devices.

Layout (the folders show the architecture; docs/architecture.md has the picture):

- ``core``       the protocol, no runtime imports: tasks, results, the Strategy interface, layouts, typed
                 local terms, generic device measurements, training options, aggregation, FLOP counting.
- ``strategies`` one file per algorithm, each with its own options, registered by name (FedLoRA, LEGEND
                 with its LCD and capacity estimator, HetLoRA, FedAdapter, full fine-tuning; presets).
- ``fleet``      the simulated heterogeneous fleet: device definitions, latency profiles, cost model, clock.
- ``data``       tasks shipped with the project, user files, partitioning.
- ``models``     backbone loading, canonical tensor keys, client methods as plugins (LoRA through peft,
                 bottleneck adapters, full fine-tuning), the local training loop.
- ``runtime``    one round loop for every runtime, one run context, the simulator's and Flower's transports.
- ``metrics``    per-round records and their writer, summaries, confidence intervals, plots.
"""

__version__ = "0.1.0"
