"""Experiment commands above the runtimes: one simulated run (``runner``), comparisons over strategies, seeds and
cost models (``compare``), re-timing a finished run (``retiming``), the paper's pre-tests (``pretest_report``),
latency profiles (``profiling``) and evaluating an exported adapter (``evaluate_export``)."""

from pathlib import Path

PROFILES = Path(__file__).parent / "profiles"  # the comparison profiles shipped with the package (``compare --profile``)


def shipped_profiles() -> list[str]:
    """Names of the shipped profiles (``quick``, ``paper``, ...)."""
    return sorted(p.stem for p in PROFILES.glob("*.toml"))
