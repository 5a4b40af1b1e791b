"""Client methods: how a device trains, uploads and counts one kind of task (``base.ClientMethod``), one module per
method, named after it: ``lora`` (peft LoRA), ``adapter`` (bottleneck adapters, FedAdapter), ``full`` (every weight)."""
