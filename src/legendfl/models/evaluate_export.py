"""Evaluate an exported adapter with nothing but transformers + peft (no legendfl model code)."""
from __future__ import annotations

import json
from pathlib import Path

import torch


@torch.no_grad()
def evaluate_exported(adapter_dir: str, task: str = "sst2", model: str = "minilm", max_length: int = 128) -> float:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..data.tasks import load_task
    from .backbone import resolve_model_path

    labels = json.loads((Path(adapter_dir) / "labels.json").read_text())
    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    data = load_task(task)
    correct = 0
    for i in range(0, len(data.dev), 64):
        chunk = data.dev[i:i + 64]
        b = [ex[1] for ex in chunk] if chunk[0][1] is not None else None
        enc = tokenizer([ex[0] for ex in chunk], b, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        pred = peft_model(**enc).logits.argmax(-1)
        correct += int((pred == torch.tensor([ex[2] for ex in chunk])).sum())
    return correct / len(data.dev)
