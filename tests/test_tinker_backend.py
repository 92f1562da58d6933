"""``backend="tinker"``: tinker-std's client layer on the official ``tinker`` SDK, over real loopback
HTTP to a tinker-std server (``serve=``), against the same calls made in process.

The scripted session (two training steps of cross-entropy and importance sampling, logprobs, a
seeded sample, save, load with optimizer, one more step) gives the same numbers through the
protocol as in process: bit for bit on ``mock`` (the wire carries training outputs as float32
bytes, as the library returns them, and metrics as doubles; sampling logprobs are float32 on the
wire, so they are compared after rounding to float32), within the fp32 class on ``torch``
(tiny-llama; it is 7 s).
Errors keep their tinker-std class and field across the protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tinker_std as ts
from tinker_std.backend import SampleRequest
from tinker_std.registry import load_backend_class
from tinker_std.types import AdamParams

from _support import sequence_datum

tinker = pytest.importorskip("tinker")

from tinker_std.backends.mock import MockBackend  # noqa: E402
from tinker_std.backends.tinker import (  # noqa: E402
    PROTOCOL_CAPABILITIES,
    TinkerBackend,
    TinkerMockBackend,
    TinkerTorchBackend,
)

os.environ["TINKER_TELEMETRY"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FP32_ATOL = 1e-4  # per-element atol of the fp32 class (spec TOL-2, TOL-3)
BATCH = [
    ([1, 5, 9, 14, 3, 7], [1.0, 1.0, 0.5, 0.0, 2.0]),
    ([4, 4, 8, 2, 11], [0.0, 1.0, 1.0, 1.0]),
    ([10, 3, 6], [1.0, -0.5]),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_STD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tinker-std-cache"))


def _is_datum(tokens: list[int], step: int) -> ts.Datum:
    n = len(tokens) - 1
    return ts.Datum(
        model_input=ts.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "logprobs": [-2.0 - 0.1 * i for i in range(n)],
            "advantages": [0.5 - 0.25 * step + 0.1 * i for i in range(n)],
        },
    )


def _session(service: ts.ServiceClient, base: str) -> dict[str, Any]:
    """The scripted session; every number it produces, by name."""
    out: dict[str, Any] = {}
    tc = service.create_lora_training_client(base_model=base, rank=4, seed=3).result()
    for step in range(2):
        ce = tc.forward_backward([sequence_datum(t, w) for t, w in BATCH], "cross_entropy")
        is_ = tc.forward_backward([_is_datum(t, step) for t, _ in BATCH], "importance_sampling")
        opt = tc.optim_step(ts.AdamParams(learning_rate=5e-2, grad_clip_norm=10.0))
        out[f"ce{step}"] = ce.result()
        out[f"is{step}"] = is_.result()
        out[f"opt{step}"] = opt.result().metrics
    probe = [sequence_datum(t, w) for t, w in BATCH]
    out["forward"] = tc.forward(probe, "cross_entropy").result()
    sampler = tc.save_weights_and_get_sampling_client().result()
    out["sample"] = sampler.sample(
        ts.ModelInput.from_ints([2, 7, 1, 8]),
        num_samples=3,
        sampling_params=ts.SamplingParams(max_tokens=6, seed=11),
        include_prompt_logprobs=True,
        topk_prompt_logprobs=3,
    ).result()
    path = tc.save_state("mid").result().path
    out["path_tail"] = path.rsplit("/", 2)[1:]
    resumed = service.create_training_client_from_state_with_optimizer(path).result()
    resumed.forward_backward(probe, "cross_entropy").result()
    out["resumed_opt"] = resumed.optim_step(ts.AdamParams(learning_rate=5e-2)).result().metrics
    out["resumed_forward"] = resumed.forward(probe, "cross_entropy").result()
    sampler_path = tc.save_weights_for_sampler("s").result().path
    from_path = service.create_sampling_client(model_path=sampler_path).result()
    out["compute_logprobs"] = from_path.compute_logprobs(ts.ModelInput.from_ints(BATCH[0][0])).result()
    return out


def _assert_same(got: dict[str, Any], want: dict[str, Any], atol: float) -> None:
    """``atol == 0``: bit-equal, sampling logprobs after rounding to float32 (the protocol's
    ``SampleResponse`` carries them as float32 bytes; mock computes them in float64)."""

    def close(a: Any, b: Any, what: str, wire_f32: bool = False) -> None:
        dtype = np.float32 if wire_f32 else float
        if atol == 0:
            np.testing.assert_array_equal(np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype), err_msg=what)
        else:
            np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), 0, atol, err_msg=what)

    for key in ("ce0", "is0", "ce1", "is1", "forward", "resumed_forward"):
        assert got[key].metrics.keys() == want[key].metrics.keys(), key
        close(got[key].metrics["loss:sum"], want[key].metrics["loss:sum"], key)
        for g, w in zip(got[key].loss_fn_outputs, want[key].loss_fn_outputs, strict=True):
            assert g["logprobs"].resolved_shape == w["logprobs"].resolved_shape, key
            close(g["logprobs"].to_numpy(), w["logprobs"].to_numpy(), key)
    for key in ("opt0", "opt1", "resumed_opt"):
        assert got[key].keys() == want[key].keys(), key
        close([got[key][k] for k in sorted(got[key])], [want[key][k] for k in sorted(want[key])], key)
    gs, ws = got["sample"], want["sample"]
    assert [s.tokens for s in gs.sequences] == [s.tokens for s in ws.sequences]
    assert [s.stop_reason for s in gs.sequences] == [s.stop_reason for s in ws.sequences]
    for g, w in zip(gs.sequences, ws.sequences, strict=True):
        close(g.logprobs, w.logprobs, "sampled logprobs", wire_f32=True)
    assert gs.prompt_logprobs[0] is None and ws.prompt_logprobs[0] is None
    close(gs.prompt_logprobs[1:], ws.prompt_logprobs[1:], "prompt logprobs", wire_f32=True)
    assert gs.topk_prompt_logprobs[0] is None and ws.topk_prompt_logprobs[0] is None
    for g_row, w_row in zip(gs.topk_prompt_logprobs[1:], ws.topk_prompt_logprobs[1:], strict=True):
        assert [t for t, _ in g_row] == [t for t, _ in w_row]
        close([lp for _, lp in g_row], [lp for _, lp in w_row], "top-k prompt logprobs", wire_f32=True)
    assert got["path_tail"] == want["path_tail"] == ["weights", "mid"]
    assert got["compute_logprobs"][0] is None and want["compute_logprobs"][0] is None
    close(got["compute_logprobs"][1:], want["compute_logprobs"][1:], "compute_logprobs", wire_f32=True)


def _compare(backend: str, tmp_path: Path, atol: float) -> None:
    with ts.ServiceClient(backend="tinker", serve=backend, checkpoint_dir=str(tmp_path / "served")) as remote:
        assert isinstance(remote.backend, TinkerBackend)
        base = remote.get_server_capabilities().supported_models[0].model_name
        assert base is not None
        got = _session(remote, base)
    with ts.ServiceClient(backend=backend, checkpoint_dir=str(tmp_path / "local")) as local:
        want = _session(local, base)
    _assert_same(got, want, atol)


def test_a_scripted_session_through_the_sdk_equals_in_process_on_mock(tmp_path: Path) -> None:
    _compare("mock", tmp_path, atol=0.0)


def test_a_scripted_session_through_the_sdk_equals_in_process_on_torch(tmp_path: Path) -> None:
    _compare("torch", tmp_path, atol=FP32_ATOL)


# -- errors --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def over_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ts.ServiceClient]:
    service = ts.ServiceClient(backend="tinker", serve="mock", checkpoint_dir=str(tmp_path_factory.mktemp("tk")))
    yield service
    service.close()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ts.ServiceClient]:
    service = ts.ServiceClient(backend="mock", checkpoint_dir=str(tmp_path_factory.mktemp("ip")))
    yield service
    service.close()


def _error(call: Any) -> ts.TinkerError:
    with pytest.raises(ts.TinkerError) as err:
        call().result()
    return err.value


def test_server_side_errors_come_back_as_the_same_typed_errors(
    over_mock: ts.ServiceClient, in_process: ts.ServiceClient
) -> None:
    """Errors raised on the server's side of the protocol (the backend's, not the client layer's)
    reach the caller with the class and message an in-process backend gives."""
    for service in (over_mock, in_process):
        tc = service.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
        tc.save_state("taken").result()
    pairs = [
        lambda s: s.create_lora_training_client(base_model="no/such-model", rank=4),  # NotFoundError
        lambda s: s.create_training_client_from_state("tinker://no-run/weights/none"),  # NotFoundError
        lambda s: s.create_sampling_client(model_path="tinker://no-run/sampler_weights/x"),  # NotFoundError
    ]
    for make in pairs:
        got, want = _error(lambda m=make: m(over_mock)), _error(lambda m=make: m(in_process))  # type: ignore[misc]
        assert type(got) is type(want), (got, want)
    remote = over_mock.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    remote.save_state("taken").result()
    conflict = _error(lambda: remote.save_state("taken"))
    assert type(conflict) is ts.ConflictError and "overwrite" in str(conflict)
    assert remote.save_state("taken", overwrite=True).result().path.endswith("/weights/taken")


def test_a_request_the_server_rejects_keeps_its_field(
    over_mock: ts.ServiceClient, in_process: ts.ServiceClient
) -> None:
    """A token id beyond the vocabulary sent straight to the backend (past this side's client
    layer): the server's client layer rejects it, and the error that comes back over HTTP is the
    in-process ``BadRequestError`` with the same field. No state changed."""
    backend = over_mock.backend
    assert isinstance(backend, TinkerBackend)
    tc = over_mock.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    local = in_process.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    probe = [sequence_datum([1, 2, 3, 4])]
    before = tc.forward(probe, "cross_entropy").result().metrics
    bad = [sequence_datum([1, 2, 3]), sequence_datum([1, 9999, 3])]
    with pytest.raises(ts.BadRequestError) as direct:
        over_mock.session.runtime.submit(backend.forward_backward(tc.model_id, bad, "cross_entropy", {}, True)).result()
    with pytest.raises(ts.BadRequestError) as wanted:
        local.forward_backward(bad, "cross_entropy")
    assert direct.value.field == wanted.value.field == "data[1].model_input"
    assert direct.value.problem == wanted.value.problem
    with pytest.raises(ts.BadRequestError) as through_client:  # this side's client layer: the same
        tc.forward_backward(bad, "cross_entropy")
    assert through_client.value.field == "data[1].model_input"
    tc.optim_step(ts.AdamParams(learning_rate=0.1)).result()
    assert tc.forward(probe, "cross_entropy").result().metrics == before


def test_the_declaration_comes_from_the_served_backend_or_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing optional is assumed of an unknown server; ``serve=NAME`` declares what NAME declares
    that the protocol carries; ``capabilities`` / ``tolerance`` (or the environment) override both."""
    minimal = load_backend_class("minimal").capabilities
    assert TinkerBackend.capabilities == ts.Capabilities(optional=frozenset(), tolerance="bf16")
    assert TinkerBackend.declaration_for({"serve": "minimal"}) == minimal
    assert TinkerMockBackend.declaration_for({}) == TinkerMockBackend.capabilities
    given = TinkerBackend.declaration_for({"api_key": "tml-x", "capabilities": "loss:cispo, soft_targets"})
    assert given == ts.Capabilities(optional=frozenset({"loss:cispo", "soft_targets"}), tolerance="bf16")
    backend = TinkerBackend(api_key="tml-x", capabilities=["loss:gspo"], tolerance="bf16")
    assert isinstance(backend, TinkerBackend) and type(backend).capabilities.optional == {"loss:gspo"}
    assert type(backend).name == "tinker"
    assert type(backend) is type(TinkerBackend(api_key="tml-y", capabilities="loss:gspo"))  # one subclass
    monkeypatch.setenv("TINKER_STD_TINKER_CAPABILITIES", "none")
    monkeypatch.setenv("TINKER_STD_TINKER_TOLERANCE", "fp32")
    assert TinkerMockBackend.declaration_for({}) == ts.Capabilities(optional=frozenset(), tolerance="fp32")
    assert TinkerBackend.declaration_for({"capabilities": ["loss:dro"]}).optional == {"loss:dro"}
    for options, field in (({"capabilities": ["introspection"]}, "capabilities"), ({"tolerance": "fp64"}, "tolerance")):
        with pytest.raises(ts.BadRequestError) as err:
            TinkerBackend(api_key="tml-x", **options)
        assert err.value.field == field


def test_a_capability_the_served_backend_lacks_is_unsupported(tmp_path: Path) -> None:
    """A user who declares ``topk_prompt_logprobs`` for a server that lacks it (``minimal``) gets the
    server's ``Unsupported`` back, with the capability named; undeclared, it is refused here."""
    with ts.ServiceClient(backend="tinker", serve="minimal", checkpoint_dir=str(tmp_path)) as service:
        sampler = service.create_sampling_client(base_model="minimal/byte-lm").result()
        with pytest.raises(ts.Unsupported) as err:
            sampler.sample(ts.ModelInput.from_ints([1, 2]), 1, ts.SamplingParams(max_tokens=1), topk_prompt_logprobs=2)
        assert err.value.capability == "topk_prompt_logprobs" and err.value.backend == "tinker"
    declared = {"capabilities": ["topk_prompt_logprobs"]}
    with ts.ServiceClient(backend="tinker", serve="minimal", checkpoint_dir=str(tmp_path), **declared) as service:
        sampler = service.create_sampling_client(base_model="minimal/byte-lm").result()
        with pytest.raises(ts.Unsupported) as err:
            sampler.sample(
                ts.ModelInput.from_ints([1, 2, 3]), 1, ts.SamplingParams(max_tokens=1), topk_prompt_logprobs=2
            ).result()
        assert err.value.capability == "topk_prompt_logprobs" and err.value.backend == "minimal"
        out = sampler.sample(ts.ModelInput.from_ints([1, 2, 3]), 2, ts.SamplingParams(max_tokens=3)).result()
        assert [len(s.tokens) for s in out.sequences] == [3, 3]


def test_overwriting_sampler_weights_is_refused_with_the_field(over_mock: ts.ServiceClient) -> None:
    tc = over_mock.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    err = _error(lambda: tc.save_weights_for_sampler("w", overwrite=True))
    assert isinstance(err, ts.BadRequestError) and err.field == "overwrite"


# -- registration and capabilities ---------------------------------------------------------------


def test_registered_and_declaring_only_what_the_protocol_carries() -> None:
    assert load_backend_class("tinker") is TinkerBackend
    assert {"introspection", "loss:stable_reinforce"}.isdisjoint(PROTOCOL_CAPABILITIES)
    assert {"topk_sample_logprobs", "target_prompt_logprobs", "prompt_alt_tokens"} <= PROTOCOL_CAPABILITIES
    assert TinkerMockBackend.capabilities.optional == MockBackend.capabilities.optional & PROTOCOL_CAPABILITIES
    assert TinkerMockBackend.capabilities.tolerance == MockBackend.capabilities.tolerance
    torch_cls = load_backend_class("torch")
    assert TinkerTorchBackend.capabilities.optional == torch_cls.capabilities.optional & PROTOCOL_CAPABILITIES
    assert TinkerTorchBackend.capabilities.tolerance == torch_cls.capabilities.tolerance
    assert {"introspection", "deterministic", "seeded_sampling"}.isdisjoint(TinkerBackend.capabilities.optional)
    assert (TinkerMockBackend.name, TinkerTorchBackend.name) == ("tinker (mock)", "tinker (torch)")
    with ts.ServiceClient(backend=TinkerMockBackend) as service:
        tc = service.create_lora_training_client(base_model="mock/tiny", rank=4).result()
        with pytest.raises(ts.Unsupported) as err:
            tc.read_state()
        assert err.value.capability == "introspection"


def test_checkpoints_are_listed_and_deleted_through_the_rest_api(over_mock: ts.ServiceClient) -> None:
    tc = over_mock.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    first = tc.save_state("one").result().path
    second = tc.save_weights_for_sampler("two").result().path
    rest = over_mock.create_rest_client()
    assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [first, second]
    assert tc.model_id in {r.training_run_id for r in rest.list_training_runs().result().training_runs}
    rest.delete_checkpoint_from_tinker_path(first).result()
    assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [second]
    with pytest.raises(ts.NotFoundError):
        rest.delete_checkpoint_from_tinker_path(first).result()


def test_paging_through_runs_lists_each_runs_checkpoints_once(
    over_mock: ts.ServiceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of ``list_training_runs`` completes only its own runs (last checkpoints): behind a
    server each run's listing is one request, so paging through N runs makes N of them, not N per
    page (measured before: 3-4 s a page against a server holding 1,759 runs). Pages of
    ``list_user_checkpoints`` come from the server's own paging, in the whole listing's order."""
    ids = []
    for k in range(5):
        tc = over_mock.create_lora_training_client(base_model="mock/tiny", rank=4, seed=k).result()
        tc.save_state(f"page-{k}").result()
        ids.append(tc.model_id)
    rest = over_mock.create_rest_client()
    sdk_rest = rest.store.rest  # the SDK's RestClient: every call is an HTTP request
    calls: list[str] = []
    listed = sdk_rest.list_checkpoints
    monkeypatch.setattr(sdk_rest, "list_checkpoints", lambda run: calls.append(run) or listed(run))
    runs: list[Any] = []
    total = None
    while total is None or len(runs) < total:
        page = rest.list_training_runs(limit=2, offset=len(runs)).result()
        total = page.cursor.total_count
        assert 0 < len(page.training_runs) <= 2
        runs += page.training_runs
    assert set(ids) <= {r.training_run_id for r in runs}
    assert all(r.last_checkpoint is not None for r in runs if r.training_run_id in ids)
    assert sorted(calls) == sorted(r.training_run_id for r in runs), f"{len(calls)} listings for {total} runs"
    # every run's checkpoints, oldest first, as the whole listing orders them; in pages the server cuts
    whole = sorted(
        (c for r in runs for c in rest.list_checkpoints(r.training_run_id).result().checkpoints),
        key=lambda c: (c.time, c.tinker_path),
    )
    calls.clear()
    pages = [rest.list_user_checkpoints(limit=3, offset=offset).result() for offset in range(0, len(whole), 3)]
    assert [c.tinker_path for p in pages for c in p.checkpoints] == [c.tinker_path for c in whole]
    assert {p.cursor.total_count for p in pages if p.cursor is not None} == {len(whole)}
    assert calls == [], f"{len(calls)} per-run listings for {len(pages)} pages of user checkpoints"


@pytest.mark.parametrize("served", ["mock", "minimal"])
def test_a_remote_byte_model_server_is_usable_and_checkpoint_dir_is_refused(served: str, tmp_path: Path) -> None:
    """A ``tinker-std serve --backend mock`` (or ``minimal``) server in another place: its models
    have no hub tokenizer, so the tinker backend uses the byte tokenizer of that backend package
    (before: ``NotFoundError``, no tokenizer). ``checkpoint_dir`` cannot take effect on a remote
    server and is refused by name (before: silently dropped); the conformance harness, which adds
    that option itself, then opens the client without it."""
    from tinker_std.conformance.backend_options import open_service
    from tinker_std.server import TinkerServer

    key = "tml-remote-test"
    local = ts.ServiceClient(backend=served, checkpoint_dir=str(tmp_path / "server"))
    with TinkerServer(local, api_key=key) as server:
        with pytest.raises(ts.BadRequestError) as refused:
            TinkerBackend(base_url=server.url, api_key=key, checkpoint_dir=str(tmp_path / "client"))
        assert refused.value.field == "checkpoint_dir"
        options = {"base_url": server.url, "api_key": key, "checkpoint_dir": str(tmp_path / "client")}
        with pytest.raises(ts.BadRequestError):  # written by the user: kept, and refused
            open_service(TinkerBackend, dict(options), user_options=options)
        added = dict(options)
        with open_service(TinkerBackend, added, user_options={"base_url": server.url, "api_key": key}) as remote:
            assert "checkpoint_dir" not in added
            base = local.get_server_capabilities().supported_models[0].model_name
            assert base is not None
            tc = remote.create_lora_training_client(base_model=base, rank=2, seed=1).result()
            ids = tc.get_tokenizer().encode("hi there")
            assert ids == local.backend.get_tokenizer(base).encode("hi there") and len(ids) == 8
            out = tc.forward_backward([sequence_datum(ids, [1.0] * 7)], "cross_entropy").result()
            assert np.isfinite(out.metrics["loss:sum"]) and out.metrics["loss:sum"] > 0
    local.close()
    assert not (tmp_path / "client").exists()


def test_a_rest_client_is_available_before_any_other_call(tmp_path: Path) -> None:
    """The tinker backend makes its checkpoint store on connecting; ``create_rest_client`` as the
    first call connects instead of answering ``Unsupported`` for a declared capability."""
    with ts.ServiceClient(backend="tinker", serve="mock", checkpoint_dir=str(tmp_path)) as service:
        rest = service.create_rest_client()
        assert rest.list_training_runs().result().training_runs == []
        tc = service.create_lora_training_client(base_model="mock/tiny", rank=2).result()
        path = tc.save_state("first").result().path
        assert [c.tinker_path for c in rest.list_checkpoints(tc.model_id).result().checkpoints] == [path]


def test_the_backend_level_sample_request_is_carried(over_mock: ts.ServiceClient, in_process: ts.ServiceClient) -> None:
    """Stop strings, temperature 0 and top-p travel as the SDK's SamplingParams."""
    params = {"max_tokens": 12, "temperature": 0.0, "stop": ["e"], "top_p": 0.9, "seed": 5}
    outs = []
    for service in (over_mock, in_process):
        sampler = service.create_sampling_client(base_model="mock/tiny").result()
        request = SampleRequest([104, 101, 108], 2, ts.SamplingParams(**params))  # type: ignore[arg-type]
        outs.append(sampler.sample(ts.ModelInput.from_ints(request.prompt), 2, request.sampling_params).result())
    assert [s.tokens for s in outs[0].sequences] == [s.tokens for s in outs[1].sequences]
    assert [s.stop_reason for s in outs[0].sequences] == [s.stop_reason for s in outs[1].sequences]


def test_the_sampling_extras_are_carried(over_mock: ts.ServiceClient, in_process: ts.ServiceClient) -> None:
    """SDK-6/7/8 through the SDK and back equal the same seeded request in process (field for field)."""
    prompt = ts.ModelInput.from_ints([104, 101, 108, 108, 111])
    targets = ts.TensorData.from_numpy(np.array([[101, -1], [108, 3], [-1, -1], [111, 104]], dtype=np.int64))
    outs = []
    for service in (over_mock, in_process):
        sampler = service.create_sampling_client(base_model="mock/tiny").result()
        outs.append(
            sampler.sample(
                prompt,
                2,
                ts.SamplingParams(max_tokens=4, seed=7),
                topk_sample_logprobs=3,
                target_prompt_logprobs=targets,
                prompt_alt_tokens_k=2,
            ).result()
        )
    over, local = outs
    for got, want in zip(over.sequences, local.sequences, strict=True):
        assert got.tokens == want.tokens and got.topk_logprobs is not None and want.topk_logprobs is not None
        assert len(got.topk_logprobs) == len(got.tokens)
        assert [[t for t, _ in row or []] for row in got.topk_logprobs] == [
            [t for t, _ in row or []] for row in want.topk_logprobs
        ]
        np.testing.assert_allclose(
            [[lp for _, lp in row or []] for row in got.topk_logprobs],
            [[lp for _, lp in row or []] for row in want.topk_logprobs],
            rtol=0,
            atol=1e-6,
        )
    assert over.target_prompt_logprobs is not None and local.target_prompt_logprobs is not None
    np.testing.assert_allclose(
        over.target_prompt_logprobs.to_numpy(), local.target_prompt_logprobs.to_numpy(), rtol=0, atol=1e-6
    )  # float32 on the wire
    assert over.prompt_alt_tokens is not None and local.prompt_alt_tokens is not None
    assert over.prompt_alt_tokens.tokens.to_numpy().tolist() == local.prompt_alt_tokens.tokens.to_numpy().tolist()
    assert over.prompt_alt_tokens.tokens.to_numpy().shape == (4, 2)


def test_inflight_samplers_through_the_sdk_behave_as_in_process(
    over_mock: ts.ServiceClient, in_process: ts.ServiceClient
) -> None:
    """spec/13 through the tinker backend: the inflight sampler keeps the newest inflight save's
    weights across an optim_step (INF-3) and moves with the next inflight save (INF-2), with the
    same logprobs as in process (float32 on the wire)."""
    prompt = ts.ModelInput.from_ints([104, 101, 108, 108, 111])
    datum = ts.Datum(
        model_input=ts.ModelInput.from_ints([104, 101, 108, 108]),
        loss_fn_inputs={"target_tokens": [101, 108, 108, 111], "weights": [1.0] * 4},
    )
    runs = []
    for service in (over_mock, in_process):
        tc = service.create_lora_training_client(base_model="mock/tiny", rank=4, seed=3).result()
        inflight = tc.save_weights_and_get_sampling_client(kind="inflight").result()
        first = inflight.compute_logprobs(prompt).result()
        tc.forward_backward([datum], "cross_entropy")
        tc.optim_step(AdamParams(learning_rate=0.05)).result()
        unchanged = inflight.compute_logprobs(prompt).result()
        tc.save_weights_and_get_sampling_client(kind="inflight").result()
        moved = inflight.compute_logprobs(prompt).result()
        runs.append((first, unchanged, moved))
    (first, unchanged, moved), reference = runs
    assert unchanged == first and moved != first
    for got, want in zip(runs[0], reference, strict=True):
        np.testing.assert_allclose(np.array(got[1:], dtype=float), np.array(want[1:], dtype=float), rtol=0, atol=1e-6)


def test_stable_reinforce_is_refused_by_name(over_mock: ts.ServiceClient) -> None:
    tc = over_mock.create_lora_training_client(base_model="mock/tiny", rank=4, seed=0).result()
    datum = ts.Datum(
        model_input=ts.ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 3], "advantages": [1.0, 1.0]}
    )
    with pytest.raises(ts.Unsupported) as err:
        tc.forward_backward([datum], "stable_reinforce").result()
    assert err.value.capability == "loss:stable_reinforce"


def test_adam_params_travel_whole() -> None:
    from tinker_std.backends.tinker.convert import adam_to_sdk

    params = AdamParams(learning_rate=0.3, beta1=0.5, beta2=0.75, eps=1e-6, weight_decay=0.1, grad_clip_norm=2.0)
    assert adam_to_sdk(params).model_dump() == params.model_dump()
