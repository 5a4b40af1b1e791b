"""A GGUF decoder, dequantised once into a plain transformers folder.

transformers reads a GGUF file by parsing the whole file for the config, again for the tokenizer and again
for the weights, dequantising every tensor: most of a minute for SmolLM2-135M on 2 CPU cores, paid by every
run (and by every strategy and seed of a comparison). The first load writes config, tokenizer and
safetensors weights to ``$LEGENDFL_CACHE/gguf/<file>-<key>/`` (default ``~/.cache/legendfl``); later loads
read that folder in seconds. The key is the file's content hash and the transformers version, so a changed
file or converter makes a new folder, and another installation of the same file (a fresh clone's virtual
environment) reuses the folder. Before the folder is used it is
checked against the GGUF load it came from: every weight equal, the same token ids for a probe text
(special tokens included); a conversion that differs is discarded and the GGUF file is read directly.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PROBE = "<|im_start|>user\nWhat is 12 + 30? Answer: 42.<|im_end|>\n<|im_start|>assistant\n Ünïcödé, tabs\tand  spaces"


def cache_root() -> Path:
    return Path(os.environ.get("LEGENDFL_CACHE", Path.home() / ".cache" / "legendfl"))


def _key(gguf: Path) -> str:
    """The file's content (SHA-256: a tenth of a second for SmolLM2's 98 MB) and transformers' version."""
    import transformers

    digest = hashlib.sha256()
    with gguf.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return hashlib.sha256(f"{digest.hexdigest()}|transformers {transformers.__version__}".encode()).hexdigest()[:16]


def _same(model, tokenizer, folder: str) -> bool:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype)
    ours, theirs = model.state_dict(), again.state_dict()
    if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
        return False
    return AutoTokenizer.from_pretrained(folder)(PROBE)["input_ids"] == tokenizer(PROBE)["input_ids"]


def plain_folder(folder: str, gguf_name: str) -> str:
    """A folder with ``config.json``, tokenizer and weights equal to the GGUF file ``gguf_name`` in ``folder`` (made
    on first use, see the module doc); ``folder`` itself where the conversion cannot be made or checked."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(folder) / gguf_name
    target = cache_root() / "gguf" / f"{gguf.stem}-{_key(gguf)}"
    if (target / "config.json").exists():
        return str(target)
    log.info("dequantising %s once into %s (later loads read that folder)", gguf, target)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_name)
    tokenizer = AutoTokenizer.from_pretrained(folder, config=config, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, gguf_file=gguf_name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as err:  # a read-only home: read the GGUF file every time
        log.warning("cannot write the conversion cache %s (%s); reading the GGUF file directly", target.parent, err)
        return folder
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if not _same(model, tokenizer, staging):
            log.warning("the conversion of %s differs from the file; reading the GGUF file directly", gguf)
            return folder
        os.replace(staging, target)
    except OSError:  # another process converted it first (the target exists) or the disk is full
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
