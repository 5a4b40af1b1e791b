"""legendfl: federated fine-tuning of language models on heterogeneous devices.

Layout (the folders show the architecture):

- ``core``       algorithm pieces with no runtime imports: LoRA layouts, the Strategy interface,
                 aggregation rules, LEGEND's capacity estimation and configuration (LCD).
- ``strategies`` one file per algorithm (FedLoRA, LEGEND and its ablations, baselines).
- ``fleet``      the simulated heterogeneous fleet: device definitions, cost model, virtual clock.
- ``data``       tasks shipped with the project, user files, partitioning.
- ``models``     backbone loading, per-layer LoRA through peft, FLOP counting, the local trainer.
- ``runtime``    the in-process simulator (one shared frozen base model) and, later, Flower.
- ``metrics``    per-round records, summaries and plots.
"""

__version__ = "0.1.0"
