"""Supervised fine-tuning in its shortest useful form: prompt/completion pairs -> LoRA.

The loop is written only against the public tinker-std API, so it runs unchanged on any backend.
Prompt tokens get weight 0 and each example's completion weights sum to 1 (per-example mean),
so ``loss:sum`` is the sum over examples of their mean token NLL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tinker_std as ts

__all__ = ["SFTConfig", "DEMO_EXAMPLES", "build_datum", "run_sft"]

DEMO_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("Q: What is the capital of France?\nA:", " Paris."),
    ("Q: What colour is the sky?\nA:", " Blue."),
    ("Q: How many legs does a cat have?\nA:", " Four."),
    ("Q: What is 2 + 2?\nA:", " 4."),
)


@dataclass(frozen=True)
class SFTConfig:
    backend: str | None = None
    base_model: str | None = None
    rank: int = 8
    steps: int = 50
    learning_rate: float = 1e-2
    seed: int = 0


def build_datum(tokenizer: ts.Tokenizer, prompt: str, completion: str) -> ts.Datum:
    """Tokens ``prompt + completion + eos``, shifted by one (ALN-1); only completion tokens are weighted."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False)
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    tokens = prompt_ids + completion_ids
    weights = [0.0] * len(prompt_ids) + [1.0 / len(completion_ids)] * len(completion_ids)
    return ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
    )


def run_sft(
    config: SFTConfig,
    examples: Sequence[tuple[str, str]] = DEMO_EXAMPLES,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train for ``config.steps`` full-batch steps; returns ``loss:sum`` per step."""
    with ts.ServiceClient(backend=config.backend) as service:
        base_model = config.base_model or service.get_server_capabilities().supported_models[0].model_name
        assert base_model is not None
        training = service.create_lora_training_client(
            base_model=base_model, rank=config.rank, seed=config.seed
        ).result()
        tokenizer = training.get_tokenizer()
        batch = [build_datum(tokenizer, prompt, completion) for prompt, completion in examples]
        adam = ts.AdamParams(learning_rate=config.learning_rate)
        losses = []
        for step in range(config.steps):
            # Submit both calls before waiting: they are ordered, and the backend can pipeline them.
            fb = training.forward_backward(batch, "cross_entropy")
            opt = training.optim_step(adam)
            loss = fb.result().metrics["loss:sum"]
            opt.result()
            losses.append(loss)
            if on_step is not None:
                on_step(step, loss)
        return losses
