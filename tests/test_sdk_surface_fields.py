"""Nothing silently ignored (issue 22, spec SDK-1), enforced over the real SDK and HTTP.

1. The request types of ``tinker.types`` (SDK 0.38) are walked: every field of every type the SDK
   sends (``*Request``, ``*Params``, ``*OptimizerConfig``, ``*Chunk``, ``*ProvenanceSpan`` and the
   nested ``Datum``, ``ModelInput``, ``TensorData``, ``LoraConfig``, ``ForwardBackwardInput``) must
   be classified in ``tinker_std.sdk_surface.FIELDS``, so a field a new SDK release adds fails here
   until someone decides what it does.
2. Against a running server on the mock backend, every ``refused`` field is sent non-default
   through the SDK (or as the SDK's own JSON where no client method takes it) and must come back
   as a typed error naming it; every ``effect`` field either has a probe here that sends it
   non-default and checks its effect, or names the spec statement whose conformance test checks it
   (the conformance suite runs through this server in CI: ``tinker (mock)``, ``tinker (torch)``).
3. ``docs/server.md`` holds the table ``scripts/sdk-surface.py`` renders from the classification.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from sdk_field_probes import PROBED, PROBES, Ctx, _training

from tinker_std.conformance.spec_index import load_statements
from tinker_std.sdk_surface import FIELDS, FieldRule

from server_support import KEY, Wire, sdk_datum, served

tinker = pytest.importorskip("tinker")
types = tinker.types
ROOT = Path(__file__).resolve().parents[1]

WALKED_SUFFIXES = ("Request", "Params", "OptimizerConfig", "Chunk", "ProvenanceSpan")
WALKED_NAMES = ("Datum", "ModelInput", "TensorData", "LoraConfig", "ForwardBackwardInput")


def sdk_request_fields() -> set[str]:
    """``Type.field`` for every field of every request type of the installed SDK."""
    found: set[str] = set()
    for name, obj in vars(types).items():
        if not inspect.isclass(obj) or not (name.endswith(WALKED_SUFFIXES) or name in WALKED_NAMES):
            continue
        if issubclass(obj, pydantic.BaseModel):
            found |= {f"{name}.{f}" for f in obj.model_fields}
        elif dataclasses.is_dataclass(obj):
            found |= {f"{name}.{f.name}" for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    return found


def test_every_field_of_every_sdk_request_type_is_classified() -> None:
    walked = sdk_request_fields()
    assert len(walked) > 150, f"the walk found only {len(walked)} fields: is tinker.types what it was?"
    unclassified = sorted(walked - set(FIELDS))
    assert not unclassified, f"SDK request fields with no rule in tinker_std/sdk_surface.py: {unclassified}"
    stale = sorted(set(FIELDS) - walked)
    assert not stale, f"rules for fields the SDK no longer has: {stale}"


def test_fixed_fields_admit_only_their_literal() -> None:
    for key, rule in FIELDS.items():
        if rule.status != "fixed":
            continue
        type_name, field = key.split(".")
        cls = getattr(types, type_name)
        annotation = cls.model_fields[field].annotation
        assert typing.get_origin(annotation) is typing.Literal and len(typing.get_args(annotation)) == 1, key
        with pytest.raises(pydantic.ValidationError):
            cls.model_validate({**_minimal(type_name), field: "something-else"})


def _minimal(type_name: str) -> dict[str, Any]:
    """Required fields of a few SDK types, for the literal check above."""
    cls = getattr(types, type_name)
    values: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if info.is_required():
            values[name] = {"model_id": "m", "session_id": "s", "path": "p", "tokens": [1], "optim_params": {}}.get(
                name, 0
            )
    return values


def test_every_rule_says_why_and_cites_a_statement_that_exists() -> None:
    statements = load_statements(ROOT / "spec")
    for key, rule in FIELDS.items():
        assert rule.why, key
        if rule.spec:
            assert rule.spec in statements, f"{key} cites {rule.spec}, which the spec does not define"


def test_effect_rules_without_a_probe_name_a_statement_a_conformance_test_checks() -> None:
    cited = importlib.import_module("test_spec_coverage").cited_ids()
    for key, rule in FIELDS.items():
        if rule.status == "effect" and key not in PROBED:
            assert rule.spec, f"{key}: an effect rule needs a probe in this file or a spec statement"
            assert rule.spec in cited, f"{key}: no conformance test cites {rule.spec}"


def test_docs_list_every_sdk_item_with_its_rule() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sdk-surface.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- probes against a running server (tests/sdk_field_probes.py) --------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    with served("mock", tmp_path_factory.mktemp("fields")) as (server, _service, base):
        yield Ctx(tinker.ServiceClient(base_url=server.url, api_key=KEY), Wire(server.url), base, server.url)


def test_every_refused_field_has_a_probe() -> None:
    missing = sorted(k for k, rule in FIELDS.items() if rule.status == "refused" and k not in PROBED)
    assert not missing, f"refused fields no probe sends: {missing}"
    unknown = sorted(set(PROBED) - set(FIELDS))
    assert not unknown, f"probes for fields that are not classified: {unknown}"


@pytest.mark.parametrize("name", list(PROBES))
def test_probe(name: str, ctx: Ctx) -> None:
    probe, fields = PROBES[name]
    rules: list[FieldRule] = [FIELDS[f] for f in fields]
    assert rules
    probe(ctx)


def test_sdk_datum_helper_still_matches(ctx: Ctx) -> None:
    """The plain path still trains (the probes above refuse; this one must not)."""
    tc = _training(ctx)
    out = tc.forward_backward([sdk_datum(tinker, [1, 5, 9, 14])], "cross_entropy").result()
    assert out.metrics["loss:sum"] > 0
