"""The one place that maps a model's modules to canonical tensor keys (what strategies and messages see).

- LoRA:     ``{layer}.{module}.lora_{A|B}``  <- ``...<block_prefix>.{layer}.{module}.lora_{A|B}.<adapter>.weight``
            (peft's parameter names; ``core.strategy.lora_key`` builds the canonical side)
- adapters: ``{layer}.output.adapter.{name}`` <- ``...<block_prefix>.{layer}.{location}.adapters.<adapter>.{name}``
            (AdapterHub's names; its location is ``output`` in BERT, ``output_adapters`` in Llama and GPT-2)
- head:     ``head.{name}`` for a head parameter ``name`` (also inside a peft wrapper)
- full:     ``full.{name}`` for a backbone parameter ``name``
"""
from __future__ import annotations

import re

from ..core.strategy import lora_key

PEFT_ADAPTER = "default"  # the peft adapter name LoRA is injected under
BOTTLENECK_ADAPTER = "fedadapter"  # the AdapterHub adapter name bottleneck adapters are added under


def lora_regex(block_prefix: str, adapter: str = PEFT_ADAPTER) -> re.Pattern:
    return re.compile(rf"(?:^|\.){re.escape(block_prefix)}\.(\d+)\.(.+)\.lora_([AB])\.{re.escape(adapter)}\.weight$")


def lora_key_of(regex: re.Pattern, parameter_name: str) -> str | None:
    """Canonical LoRA key of a peft parameter name (``None`` if it is not a LoRA weight)."""
    m = regex.search(parameter_name)
    return lora_key(int(m.group(1)), m.group(2), m.group(3)) if m else None


def adapter_regex(block_prefix: str, adapter: str = BOTTLENECK_ADAPTER) -> re.Pattern:
    return re.compile(rf"(?:^|\.){re.escape(block_prefix)}\.(\d+)\.(.+)\.adapters\.{re.escape(adapter)}\.(.+)$")


ADAPTER_LOCATION = "output"  # the canonical name of a block's bottleneck-adapter location (after its feed-forward)


def adapter_key_of(regex: re.Pattern, parameter_name: str) -> str | None:
    """Canonical key of an AdapterHub parameter; the block's own name of the location (``output`` in BERT,
    ``output_adapters`` in Llama and GPT-2) becomes ``output``, so strategies see one naming for every model."""
    m = regex.search(parameter_name)
    return f"{m.group(1)}.{ADAPTER_LOCATION}.adapter.{m.group(3)}" if m else None


def head_key(name: str) -> str:
    return f"head.{name}"


def full_key(name: str) -> str:
    return f"full.{name}"


def is_head_key(key: str) -> bool:
    return key.startswith("head.")
