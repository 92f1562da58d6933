"""An independent tinker-std provider, written from the spec as a third party would (issue 19).

``independent_backend:IndependentBackend`` (float32, class ``fp32``) and
``independent_backend:IndependentBf16Backend`` (bfloat16 forward, class ``bf16``), importable with
``tests/`` on ``PYTHONPATH``. ``tests/test_independent_backend.py`` runs the conformance suite
against both: a suite that fails a correct provider has a false failure.
"""

from .backend import IndependentBackend, IndependentBf16Backend

__all__ = ["IndependentBackend", "IndependentBf16Backend"]
