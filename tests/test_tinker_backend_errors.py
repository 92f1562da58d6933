"""``backend="tinker"``: the typed errors the tinker backend raises without a shared server: the
SDK's exception classes mapped to tinker-std's (field and category kept), a server that is not
there (at once, no retries), a missing or malformed key (at construction), a wrong key (401), and
contradictory options (the field named). The errors a served request brings back are in
test_tinker_backend.py."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest

import tinker_std as ts

tinker = pytest.importorskip("tinker")
from tinker.types.request_error_category import RequestErrorCategory  # noqa: E402

from tinker_std.backends.tinker import (  # noqa: E402
    TinkerAuthenticationError,
    TinkerBackend,
    TinkerCredentialsError,
    TinkerServerUnreachableError,
)
from tinker_std.backends.tinker.errors import to_std_error  # noqa: E402
from tinker_std.server import TinkerServer  # noqa: E402

os.environ["TINKER_TELEMETRY"] = "0"


def test_sdk_errors_map_to_tinker_std_errors() -> None:
    """The mapping on the SDK's own exception classes (as its HTTP layer builds them)."""
    failed = tinker.RequestFailedError(
        "Request failed: BadRequestError: adam_params.beta1: Input should be less than 1 for "
        "self.request_id='abc' and expected type self.model_cls=<class 'tinker.OptimStepResponse'>",
        request_id="abc",
        category=RequestErrorCategory.User,
    )
    mapped = to_std_error(failed)
    assert isinstance(mapped, ts.BadRequestError) and mapped.field == "adam_params.beta1"
    assert mapped.problem == "Input should be less than 1"
    server = to_std_error(
        tinker.RequestFailedError(
            "Request failed: RuntimeError: boom for self.request_id='r'", "r", RequestErrorCategory.Server
        )
    )
    assert isinstance(server, ts.RequestFailedError) and server.category == "server" and "boom" in str(server)
    request = httpx.Request("POST", "http://127.0.0.1:1/api/v1/create_model")
    body = {"error": "BadRequestError: lora_config: must be an object", "field": "lora_config", "category": "user"}
    status = tinker.BadRequestError("bad", response=httpx.Response(400, json=body, request=request), body=body)
    mapped = to_std_error(status)
    assert isinstance(mapped, ts.BadRequestError) and (mapped.field, mapped.problem) == (
        "lora_config",
        "must be an object",
    )
    body = {"error": "NotFoundError: no session 'x' on this server", "category": "user"}
    missing = tinker.NotFoundError("nf", response=httpx.Response(404, json=body, request=request), body=body)
    assert isinstance(to_std_error(missing), ts.NotFoundError)
    # Another server's wording: the status decides (a 404 saying "model not found" is NotFoundError).
    for code, body, wanted in (
        (404, {"detail": "model not found"}, ts.NotFoundError),
        (409, {"error": "already exists"}, ts.ConflictError),
        (422, {"detail": [{"loc": ["body", "x"], "msg": "field required"}]}, ts.BadRequestError),
        (500, {"error": "KeyError: 'weights'"}, ts.RequestFailedError),
    ):
        response = httpx.Response(code, json=body, request=request)
        foreign = tinker.APIStatusError("foreign", response=response, body=body)
        assert type(to_std_error(foreign)) is wanted, (code, body)
    denied = tinker.AuthenticationError("no", response=httpx.Response(401, request=request), body=None)
    assert isinstance(to_std_error(denied), TinkerAuthenticationError)
    assert to_std_error(ValueError("not the SDK's")) is None


# -- no server, no key ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_server_fails_at_once_with_a_typed_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    with ts.ServiceClient(backend="tinker", base_url=url, api_key="tml-nobody") as service:
        with pytest.raises(TinkerServerUnreachableError) as err:
            service.get_server_capabilities()
    assert time.monotonic() - started < 10, "no retries against a missing server"
    assert url in str(err.value) and "serve=" in str(err.value)


def test_no_key_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(TinkerCredentialsError, match="TINKER_API_KEY"):
        ts.ServiceClient(backend="tinker", base_url="http://127.0.0.1:1")
    with pytest.raises(TinkerCredentialsError, match="tml-"):
        ts.ServiceClient(backend="tinker", base_url="http://127.0.0.1:1", api_key="sk-not-a-tinker-key")
    monkeypatch.setenv("TINKER_API_KEY", "tml-from-env")
    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:9")
    backend = TinkerBackend()
    assert (backend.base_url, backend._api_key) == ("http://127.0.0.1:9", "tml-from-env")


def test_a_wrong_key_is_a_typed_error(tmp_path: Path) -> None:
    with ts.ServiceClient(backend="mock") as served, TinkerServer(served, api_key="tml-right") as server:
        with ts.ServiceClient(backend="tinker", base_url=server.url, api_key="tml-wrong") as service:
            with pytest.raises(TinkerAuthenticationError, match="401"):
                service.get_server_capabilities()


def test_contradictory_options_name_the_field() -> None:
    for options, field in (
        ({"serve": "mock", "base_url": "http://127.0.0.1:1"}, "serve"),
        ({"serve": "no-such-backend"}, "serve"),
        ({"serve": "tinker"}, "serve"),
        ({"serve_options": {"a": 1}, "api_key": "tml-x"}, "serve_options"),
        ({"serve": "mock", "connect_timeout_s": 0}, "connect_timeout_s"),
    ):
        with pytest.raises(ts.BadRequestError) as err:
            TinkerBackend(**options)
        assert err.value.field == field, options
