"""The backends that ship with tinker-std, installed as ``tinker_std.backends`` (this folder).

``mock`` (pure-torch toy model, the reference for tests), ``minimal`` (a complete backend in one
file, to copy), ``torch`` (Hugging Face models with peft LoRA), ``fsdp`` (the torch engine sharded
over ``torch.distributed`` ranks), ``modal`` (the torch backend in Modal containers) and ``tinker``
(any server that speaks the Tinker protocol, through the official SDK). Which reuses what, and
where a new backend plugs in: ``backends/README.md``.
"""
