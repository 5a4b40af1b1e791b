"""Experiment commands above the runtimes: one simulated run (``runner``), comparisons over strategies, seeds and
cost models (``compare``), re-timing a finished run (``retiming``), the paper's pre-tests (``pretest_report``),
latency profiles (``profiling``) and evaluating an exported adapter (``evaluate_export``)."""
