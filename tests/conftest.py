import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def backbone():
    from legendfl.models.backbone import load_backbone

    return load_backbone("minilm", num_labels=2, seed=0)


@pytest.fixture(scope="session")
def sst2():
    from legendfl.data.tasks import load_task

    return load_task("sst2")


@pytest.fixture(scope="session")
def sst2_small(backbone, sst2):
    """Real SST-2: 600 training and 200 dev examples, tokenised."""
    from legendfl.models.trainer import TokenizedData

    return TokenizedData(backbone.tokenizer, sst2.train[:600], 64), TokenizedData(backbone.tokenizer, sst2.dev[:200], 64)
