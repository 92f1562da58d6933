"""Train ``tiny-llama`` a few steps on the answers of ``tiny_arith.jsonl`` through the official
``tinker`` SDK against a running ``tinker-std serve``, save sampler weights and print their path
(docs/openai.md, "Evaluate a checkpoint with lm-eval"). Run from the repository root."""

import json
import os

import tinker

URL = os.environ.get("TINKER_STD_URL", "http://127.0.0.1:8765")
KEY = os.environ.get("TINKER_STD_KEY", "tml-eval")

service = tinker.ServiceClient(base_url=URL, api_key=KEY)
training = service.create_lora_training_client(base_model="tiny-llama", rank=8, seed=0).result()
tok = training.get_tokenizer()
data = []
with open("docs/lmeval/tiny_arith.jsonl") as rows:
    for line in rows:
        row = json.loads(line)
        prompt = tok.encode(row["question"])
        target = [*tok.encode(row["answer"], add_special_tokens=False), tok.eos_token_id]  # the answer, then stop
        tokens = prompt + target
        weights = [0.0] * (len(prompt) - 1) + [1.0] * len(target)
        data.append(
            tinker.Datum(
                model_input=tinker.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
            )
        )
for step in range(60):
    out = training.forward_backward(data, "cross_entropy").result()
    training.optim_step(tinker.AdamParams(learning_rate=5e-2)).result()
    if step % 20 == 0 or step == 59:
        print("step", step, "loss", out.metrics)
print(training.save_weights_for_sampler("lmeval-eos").result().path)
