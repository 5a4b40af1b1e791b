"""legendfl: federated fine-tuning of language models on heterogeneous devices.

Layout (the folders show the architecture; docs/architecture.md has the picture):

- ``core``       the protocol, no runtime imports: tasks, results, the Strategy interface, layouts, typed
                 local terms, generic device measurements, training options, aggregation, FLOP counting.
- ``strategies`` one file per algorithm, each with its own options, registered by name (FedLoRA, LEGEND
                 with its LCD and capacity estimator, HetLoRA, FedAdapter, full fine-tuning; presets).
- ``fleet``      the simulated heterogeneous fleet: device definitions, latency profiles, cost model, clock.
- ``data``       tasks shipped with the project, user files, partitioning.
- ``metrics``    per-round records and their writer, summaries, confidence intervals, plots.
- ``models``     model families: backbone discovery, canonical tensor keys, tokenised inputs, generative data.
- ``engine``     local training: the loop every client method runs, per-device dropout rows, local terms,
                 and the batched engine (many devices' LoRA in one pass of the shared model).
- ``methods``    client methods, one file each: LoRA through peft, bottleneck adapters, full fine-tuning.
- ``runtime``    one round loop for every runtime, one run context, the simulator's and Flower's transports.
- ``experiments`` commands above the runtimes: one simulated run, compare, re-timing, pre-tests, profiling.
- ``cli.py``, ``config.py``, ``logs.py``: the command line, the run configuration, logging.
"""

__version__ = "0.1.0"
