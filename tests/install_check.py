"""One torch training step and one sample on tiny-llama, printed as JSON (run by test_install.py in a
fresh virtual environment, and in the test's own one for comparison)."""

from __future__ import annotations

import json
import sys

import tinker_std as ts


def main(checkpoint_dir: str) -> None:
    svc = ts.ServiceClient(backend="torch", checkpoint_dir=checkpoint_dir)
    tc = svc.create_lora_training_client(base_model="tiny-llama", rank=4, seed=0).result()
    ids = tc.get_tokenizer().encode("tinker-std installs from its wheel and trains a step")
    datum = ts.Datum(
        model_input=ts.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
    )
    losses = []
    for _ in range(2):
        losses.append(tc.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"])
        tc.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    out = sampler.sample(
        ts.ModelInput.from_ints(ids[:4]), num_samples=2, sampling_params=ts.SamplingParams(max_tokens=8, seed=0)
    ).result()
    svc.close()
    versions = {name: ts.__version__ if name == "tinker-std" else _version(name) for name in _PACKAGES}
    print(
        json.dumps(
            {
                "losses": losses,
                "tokens": [s.tokens for s in out.sequences],
                "logprobs": [s.logprobs for s in out.sequences],
                "versions": versions,
                "module": ts.__file__,
            }
        )
    )


_PACKAGES = ("tinker-std", "torch", "transformers", "peft")


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    main(sys.argv[1])
