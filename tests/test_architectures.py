"""Generic block and linear-module discovery on BERT, RoBERTa, DeBERTa-v2 and MPNet naming.

Tiny randomly initialised models are written to disk (with MiniLM's tokenizer) and loaded through the same
path as any local Hugging Face directory; LoRA is then placed on one layer and trained for a step.
"""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, DebertaV2Config, MPNetConfig, RobertaConfig

from legendfl.core.lora_layout import LoraLayout
from legendfl.models.backbone import load_backbone
from legendfl.methods.lora import get_lora_tensors, lora_adapter

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, vocab_size=31000,
             max_position_embeddings=128)


@pytest.mark.parametrize("config, prefix, modules", [
    (RobertaConfig(**SMALL, pad_token_id=0), "roberta.encoder.layer",
     {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense",
      "output.dense"}),
    (DebertaV2Config(**SMALL, pad_token_id=0), "deberta.encoder.layer",
     {"attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj", "attention.output.dense",
      "intermediate.dense", "output.dense"}),
    (MPNetConfig(**SMALL, pad_token_id=0), "mpnet.encoder.layer",
     {"attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "intermediate.dense", "output.dense"}),
])
def test_discovery_and_lora_on_other_architectures(tmp_path, backbone, config, prefix, modules):
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    backbone.tokenizer.save_pretrained(tmp_path)
    b = load_backbone(str(tmp_path), num_labels=3)
    assert b.block_prefix == prefix and set(b.linear_modules) == modules and b.num_layers == 3
    assert b.head_names and not any(n.startswith(b.model.base_model_prefix + ".") for n in b.head_names)
    layout = LoraLayout({1: 2, 2: 4}, 3)
    with lora_adapter(b, layout, {**b.spec.init_lora(layout, 0), **b.head_tensors()}) as model:
        got = get_lora_tensors(b, model)
        assert {k.split(".")[0] for k in got} == {"1", "2"} and len(got) == 2 * 2 * len(modules)
        enc = b.tokenizer(["a test", "another one"], return_tensors="pt", padding=True, return_token_type_ids=False)
        loss = model(**enc, labels=torch.tensor([0, 2])).loss
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n)
