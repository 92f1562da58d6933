"""tinker-std cookbook: short training loops written only against the public ``tinker_std`` API.

Recipes (each a config dataclass and ``run(config, ...) -> list[dict]`` of per-step metrics, and a
``tinker-std <recipe>`` command): ``sft``, ``rl``, ``dpo``, ``distill``, ``evaluate`` (``eval``).
Building blocks: ``renderers`` (chat messages -> tokens + weights), ``common`` (shared config,
schedules, checkpoints and exact resume, logging) and ``plotting`` (``curves.png``). Demo data
ships in ``data/`` and is named ``demo:chat``, ``demo:arithmetic``, ``demo:preferences``.
Guides: ``docs/cookbook/``.
"""
