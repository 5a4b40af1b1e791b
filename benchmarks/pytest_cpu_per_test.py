"""A pytest plugin: each test's busy CPU of the whole machine (from /proc/stat: Linux; its subprocesses, and any
process it starts, are counted, which pytest's durations and `time` miss) and its wall time.

    PYTHONPATH=benchmarks .venv/bin/python -m pytest -q -s -p no:xdist -p pytest_cpu_per_test tests/test_flower.py

Prints one line per test, ``CPU <core-s> core-s <wall> s <node id>``. Run it alone: anything else running is counted.
"""
from __future__ import annotations

import time

import pytest
from flower_overhead import busy_core_s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = busy_core_s(), time.time()
    yield
    print(f"\nCPU {busy_core_s() - cpu:7.1f} core-s {time.time() - wall:6.1f} s  {item.nodeid}", flush=True)
