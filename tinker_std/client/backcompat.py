"""The tinker SDK's pre-0.38 client futures: ``BackcompatTrainingClientFuture`` and
``BackcompatSamplingClientFuture``.

Before SDK 0.38, ``ServiceClient.create_lora_training_client`` (and the other client-creating
methods) returned the client itself; since then they return a future of it. The SDK's futures of
clients may still be used as the client, deprecated: every attribute read and method call on the
future waits for the client and forwards to it, with a ``FutureWarning``. tinker-std returns the
same two classes from the same methods, so code written either way runs unchanged
(``BackcompatTrainingClientFuture`` lives in ``client/service.py``, next to the methods that
return it, so that this module needs no ``TrainingClient``).

The future half is ``APIFuture`` (ORD: ``result``, ``result_async``, ``await``); only names the
future itself does not have are forwarded. Unlike the SDK's wrappers, these are not instances of
``TrainingClient`` / ``SamplingClient`` (``isinstance`` checks need ``.result()`` first).
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

from ..futures import APIFuture
from .sampling import SamplingClient

__all__ = ["BackcompatClientFuture", "BackcompatSamplingClientFuture"]

C = TypeVar("C")


class BackcompatClientFuture(APIFuture[C]):
    """An ``APIFuture`` of a client that can also be used, deprecated, as the client."""

    def __init__(self, inner: APIFuture[C]) -> None:
        super().__init__(inner.future(), inner._loop_thread)

    def __getattr__(self, name: str) -> Any:
        # Only called for names APIFuture does not have: the client's methods and attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        warnings.warn(
            f"Using `.{name}` on the future returned by a client-creation method is deprecated (as in the "
            "tinker SDK 0.38); call .result() on the future, or await it, to get the client first.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(self.result(), name)

    def __repr__(self) -> str:
        future = self.future()
        if not future.done():
            state = "pending"
        elif future.cancelled():
            state = "cancelled"
        elif (exception := future.exception()) is not None:
            state = f"failed: {exception!r}"
        else:
            state = repr(future.result())
        return f"<{type(self).__name__}: {state}>"


class BackcompatSamplingClientFuture(BackcompatClientFuture[SamplingClient]):
    """What ``create_sampling_client`` and ``save_weights_and_get_sampling_client`` return: a
    future of the ``SamplingClient``, usable (deprecated) as the client itself."""
