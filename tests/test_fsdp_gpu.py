"""The FSDP backend's GPU path: NCCL, bfloat16, one rank per GPU (skipped without 2 GPUs).

The same session on ``torch`` (one GPU, bf16) and ``fsdp`` (2 GPUs, bf16) must agree within the
bf16 tolerance class (atol 5e-2 per token, rtol 2e-2 on sums).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tinker_std as ts

from _support import sequence_datum

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"
)


def _losses(svc: ts.ServiceClient) -> list[float]:
    tc = svc.create_lora_training_client("tiny-llama", rank=4, seed=0).result()
    data = [sequence_datum([(5 * i + 3 * j) % 300 + 1 for j in range(10 + i)]) for i in range(4)]
    out = []
    for _ in range(3):
        out.append(tc.forward_backward(data, "cross_entropy").result().metrics["loss:sum"])
        tc.optim_step(ts.AdamParams(learning_rate=1e-2)).result()
    return out


def test_fsdp_on_two_gpus_matches_torch_in_bf16(tmp_path: Path) -> None:
    with ts.ServiceClient(backend="torch", device="cuda", checkpoint_dir=str(tmp_path)) as ref_svc:
        expected = _losses(ref_svc)
    with ts.ServiceClient(backend="fsdp", world_size=2, device="cuda", checkpoint_dir=str(tmp_path)) as svc:
        assert svc.capabilities.tolerance == "bf16"
        got = _losses(svc)
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=5e-2)
