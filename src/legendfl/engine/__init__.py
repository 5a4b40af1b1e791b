"""The training engine: the local loop every client method runs (``trainer``), per-device dropout and batch rows
(``device_rows``), local terms (``local_terms``), and the batched engine that trains many devices' LoRA tasks in
one pass of the shared model (``batched_training``, ``batched_lora``)."""
