"""A tokenised split as the engine reads it: token ids per example, labels, and batches padded on demand."""
from __future__ import annotations

import numpy as np
import torch


def right_padded(sequences: list[list[int]], indices, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``indices`` of ``sequences``, right-padded with ``fill`` to the longest, and their attention mask."""
    width = max(len(sequences[i]) for i in indices)
    out = torch.full((len(indices), width), fill, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(sequences[i])
        out[row, :n] = torch.tensor(sequences[i], dtype=torch.long)
        mask[row, :n] = 1
    return out, mask


class TokenizedData:
    """A tokenised split: token ids (and token type ids) per example, and labels; padding per batch."""

    def __init__(self, tokenizer, examples: list, max_length: int = 128) -> None:
        a = [ex[0] for ex in examples]
        b = [ex[1] for ex in examples] if any(ex[1] is not None for ex in examples) else None
        enc = tokenizer(a, b, truncation=True, max_length=max_length)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.token_type_ids: list[list[int]] | None = enc.get("token_type_ids")
        self.labels = np.asarray([ex[2] for ex in examples], dtype=np.int64)
        self.lengths = np.asarray([len(x) for x in self.input_ids])
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        ids, mask = right_padded(self.input_ids, indices, self.pad_id)
        out = {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(self.labels[indices])}
        if self.token_type_ids is not None:
            out["token_type_ids"] = right_padded(self.token_type_ids, indices, 0)[0]
        return out
