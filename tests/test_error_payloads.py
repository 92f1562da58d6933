"""``to_payload`` / ``from_payload`` of every tinker-std error class (tinker_std/errors.py): the one
encoding the Modal and FSDP backends and the server use to carry errors across a boundary."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

import tinker_std.errors as errors
from backends.fsdp.wire import pack, rebuild
from backends.modal import wire as modal_wire
from backends.modal.errors import ContainerLostError
from tinker_std.errors import TinkerError, error_payload
from tinker_std.server.failures import ServerShutdown, ServerUnsupported
from tinker_std.server.futures import TenantQueueFull

#: one instance of every class of tinker_std.errors (the test below checks none is missing)
EXAMPLES: list[TinkerError] = [
    errors.TinkerError("plain"),
    errors.APIError("api"),
    errors.APIStatusError("status"),
    errors.BadRequestError("data[2].loss_fn_inputs.weights", "must be finite"),
    errors.ContextLengthError("data[1]", "too long"),
    errors.NotFoundError("no model x"),
    errors.ConflictError("exists"),
    errors.RequestFailedError("boom", request_id="r1", category="user"),
    errors.Unsupported("loss:dro", "torch"),
    errors.BackendValidationError("no name"),
    errors.IncompatibleEnvironmentError("bad pair.", installed={"peft": "0.1"}, fix="pip install peft==0.21.2"),
    errors.NonFiniteError("loss_fn_inputs", "the loss of datum 0 is not finite (inf)"),
    errors.CorruptCheckpointError("tinker://run-1/weights/w", "digest mismatch"),
    errors.StorageFullError("tinker://run-1/weights/w"),
    errors.LimitExceededError("num_samples", "300 samples exceed the limit of 256"),
]
ELSEWHERE: list[TinkerError] = [
    ServerShutdown("stopping"),
    ServerUnsupported("no billing"),
    TenantQueueFull("2048 requests of this key are unfinished"),
    ContainerLostError("training model", "m1", "old", "new"),
]


def test_every_error_class_has_an_example() -> None:
    defined = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, TinkerError)}
    assert defined == {type(e) for e in EXAMPLES}


@pytest.mark.parametrize("error", EXAMPLES + ELSEWHERE, ids=lambda e: type(e).__name__)
def test_round_trip_keeps_class_message_and_attributes(error: TinkerError) -> None:
    payload = error.to_payload()
    plain = json.loads(json.dumps(payload))  # nothing but JSON-able data
    rebuilt = TinkerError.from_payload(plain)
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error) and vars(rebuilt) == vars(error)
    assert payload["type"] == type(error).__name__
    assert payload["status_code"] == type(error).status_code and payload["retryable"] == type(error).retryable


def test_status_codes_of_the_spec_table() -> None:
    """ERR-1's codes, and 500 for failures of the server side."""
    assert (errors.BadRequestError.status_code, errors.NotFoundError.status_code) == (400, 404)
    assert errors.ConflictError.status_code == 409 and errors.ContextLengthError.status_code == 400
    assert errors.RequestFailedError.status_code == 500 and errors.IncompatibleEnvironmentError.status_code == 500
    assert ServerShutdown.status_code == 503 and ServerShutdown.retryable


def test_an_unknown_class_is_rebuilt_as_its_nearest_known_ancestor() -> None:
    payload: dict[str, Any] = ContainerLostError("sampler", "s1", "a", "b").to_payload()
    payload["classes"][0] = "somewhere.else:GoneError"
    rebuilt = TinkerError.from_payload(payload)
    assert type(rebuilt) is errors.RequestFailedError and rebuilt.category == "server"
    assert str(rebuilt) == str(ContainerLostError("sampler", "s1", "a", "b"))


def test_other_exceptions_are_encoded_as_server_failures() -> None:
    rebuilt = TinkerError.from_payload(error_payload(ZeroDivisionError("division by zero")))
    assert isinstance(rebuilt, errors.RequestFailedError) and rebuilt.category == "server"
    assert str(rebuilt) == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_modal_and_fsdp_carry_errors_with_the_same_encoding(error: TinkerError) -> None:
    carried = modal_wire.decode_error(pickle.loads(pickle.dumps(modal_wire.encode_error(error))))
    assert type(carried) is type(error) and vars(carried) == vars(error)
    record = pack(error, rank=1)
    assert record.payload == error.to_payload()
    across = rebuild(pickle.loads(pickle.dumps(record)))
    assert type(across) is type(error) and str(across) == str(error) and vars(across) == vars(error)


def test_fsdp_carries_other_exceptions_as_their_own_class() -> None:
    rebuilt = rebuild(pack(RuntimeError("rank 1 ran out of memory"), rank=1))
    assert type(rebuilt) is RuntimeError and str(rebuilt) == "rank 1 ran out of memory"
