"""Helpers for the server tests: SDK datums, raw wire calls over httpx, a served backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import tinker_std as ts
from tinker_std.server import TinkerServer

os.environ["TINKER_TELEMETRY"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "tml-tinker-std-test"


def sdk_datum(tinker: Any, tokens: list[int], weights: list[float] | None = None) -> Any:
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights or [1.0] * (len(tokens) - 1)},
    )


@contextmanager
def served(backend: str, root: Path, **options: Any) -> Iterator[tuple[TinkerServer, ts.ServiceClient, str]]:
    """(server, its ServiceClient, first base model) for ``backend`` with checkpoints under ``root``."""
    service = ts.ServiceClient(backend=backend, checkpoint_dir=str(root / f"ckpt-{uuid.uuid4().hex[:6]}"))
    base = service.get_server_capabilities().supported_models[0].model_name
    assert base is not None
    options.setdefault("api_key", KEY)
    try:
        with TinkerServer(service, **options) as server:
            yield server, service, base
    finally:
        service.close()


class Wire:
    """Raw protocol calls (what the SDK sends), for the cases the SDK cannot produce."""

    def __init__(self, url: str, key: str = KEY) -> None:
        self.http = httpx.Client(base_url=url + "/api/v1/", headers={"X-API-Key": key}, timeout=60)

    def post(self, endpoint: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.http.post(endpoint, json=body or {}, **kwargs)

    def session(self) -> str:
        return str(self.post("create_session", {"tags": [], "sdk_version": "0.38.0"}).json()["session_id"])

    def result(self, request_id: str) -> httpx.Response:
        while True:
            reply = self.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": False})
            if reply.headers["content-type"].startswith("application/json") and reply.json().get("type") == "try_again":
                continue
            return reply

    def create_model(self, session_id: str, base: str, seq: int = 0, seed: int = 0) -> str:
        body = {
            "session_id": session_id,
            "model_seq_id": seq,
            "base_model": base,
            "lora_config": {"rank": 4, "seed": seed},
        }
        reply = self.post("create_model", body)
        assert reply.status_code == 200, reply.text
        done = self.result(reply.json()["request_id"]).json()
        assert "model_id" in done, done
        return str(done["model_id"])


def fb_body(model_id: str, seq_id: int, tokens: list[int], forward_only: bool = False) -> bytes:
    """A protobuf ForwardBackwardRequest (cross entropy, unit weights)."""
    from tinker.proto import tinker_public_pb2 as pb

    msg = pb.ForwardBackwardRequest(
        model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy", forward_only=forward_only
    )
    datum = msg.data.add()
    datum.model_input.add().encoded_text.tokens = np.asarray(tokens[:-1], dtype="<i4").tobytes()
    targets = datum.loss_fn_inputs["target_tokens"]
    targets.dense, targets.dtype = np.asarray(tokens[1:], dtype="<i8").tobytes(), pb.DTYPE_INT64
    targets.shape.append(len(tokens) - 1)
    weights = datum.loss_fn_inputs["weights"]
    weights.dense, weights.dtype = np.ones(len(tokens) - 1, dtype="<f4").tobytes(), pb.DTYPE_FLOAT32
    weights.shape.append(len(tokens) - 1)
    return bytes(msg.SerializeToString())


def proto_headers() -> dict[str, str]:
    return {"Content-Type": "application/x-protobuf"}
