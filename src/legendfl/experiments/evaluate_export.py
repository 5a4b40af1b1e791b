"""Evaluate an exported model with nothing but transformers + peft (no legendfl model code): a run's peft adapter
(``adapter/``) on its base model, or a pruned model with its LoRA merged (``pruned_model/``, FedSpine's export or
one-shot pruning's), loaded alone."""
from __future__ import annotations

import json
from pathlib import Path

import torch


@torch.no_grad()
def evaluate_exported(adapter_dir: str, task: str = "sst2", model: str = "minilm", max_length: int = 128,
                      max_dev_examples: int | None = None) -> float:
    """Accuracy of the exported model on the task's dev split (its first ``max_dev_examples``, as a run evaluates)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..data.tasks import load_task
    from ..models.backbone import resolve_model_path

    if max_length <= 0:
        raise ValueError(f"--max-length must be a positive integer, got {max_length}")
    if max_dev_examples is not None and max_dev_examples <= 0:
        raise ValueError(f"--max-dev-examples must be a positive integer, got {max_dev_examples}")
    folder = Path(adapter_dir)
    plain = not (folder / "adapter_config.json").is_file() and (folder / "config.json").is_file()
    missing = [n for n in ("config.json" if plain else "adapter_config.json", "labels.json") if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{adapter_dir} is not an exported adapter or pruned model (no {' or '.join(missing)}; runs of "
                         f"FedAdapter and full fine-tuning export none)")
    try:
        labels = json.loads((folder / "labels.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / 'labels.json'} is not valid JSON ({err.msg})") from None
    data = load_task(task)
    if not isinstance(labels, list) or [str(x) for x in labels] != [str(x) for x in data.label_names]:
        raise ValueError(f"the {'model' if plain else 'adapter'} in {adapter_dir} was trained on labels {labels}, task {task!r} has "
                         f"{data.label_names}: evaluate it on its own task (--task)")
    if plain:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        peft_model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    else:
        path = resolve_model_path(model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
        peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    dev = data.dev[:max_dev_examples]
    correct = 0
    for i in range(0, len(dev), 64):
        chunk = dev[i:i + 64]
        b = [ex[1] for ex in chunk] if chunk[0][1] is not None else None
        enc = tokenizer([ex[0] for ex in chunk], b, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        pred = peft_model(**enc).logits.argmax(-1)
        correct += int((pred == torch.tensor([ex[2] for ex in chunk])).sum())
    return correct / len(dev)
