"""Probes for ``tests/test_sdk_surface_fields.py``: each sends SDK 0.38 request fields non-default
through the SDK (or as the SDK's own JSON where no client method takes them) to a running server
and checks their effect or their refusal by name. ``PROBES`` maps a probe's name to the function
and the ``tinker_std.sdk_surface.FIELDS`` keys it covers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tinker_std.sdk_surface import FIELDS

from server_support import KEY, Wire, fb_body, proto_headers

tinker = pytest.importorskip("tinker")
types = tinker.types


@dataclass
class Ctx:
    sdk: Any
    wire: Wire
    base: str
    url: str


PROMPT = [1, 7, 42, 99, 3]


def _training(ctx: Ctx, **kwargs: Any) -> Any:
    return ctx.sdk.create_lora_training_client(base_model=ctx.base, rank=4, seed=0, **kwargs).result()


def _error_text(call: Callable[[], Any]) -> str:
    try:
        result = call()
        if hasattr(result, "result"):
            result.result()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("the call succeeded; it must be refused")


def _refused(call: Callable[[], Any], *names: str) -> None:
    text = _error_text(call)
    assert "Error" in text or "Unsupported" in text, text
    for name in names:
        assert name in text, f"the refusal does not name {name!r}: {text}"


def _raw_refused(reply: Any, *names: str, wire: Wire | None = None) -> None:
    body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
    if reply.status_code == 200 and "request_id" in body and wire is not None:
        body = wire.result(body["request_id"]).json()
    text = str(body.get("error", "")) + " " + str(body.get("field", ""))
    assert body.get("error"), f"not refused: {reply.status_code} {body}"
    for name in names:
        assert name in text, f"the refusal does not name {name!r}: {body}"


def _sampler(ctx: Ctx, record: bool = False) -> tuple[Any, Any]:
    tc = _training(ctx)
    return tc, tc.save_weights_and_get_sampling_client(record_stability_info=record).result()


def probe_sample_extras(ctx: Ctx) -> None:
    _, sc = _sampler(ctx)
    prompt, params = types.ModelInput.from_ints(PROMPT), types.SamplingParams(max_tokens=2)
    seq = sc.sample(prompt, 1, params, topk_sample_logprobs=2).result().sequences[0]
    assert seq.topk_logprobs is not None and [len(row) for row in seq.topk_logprobs] == [2] * len(seq.tokens), seq
    ids = [PROMPT[1], 5, PROMPT[2], -1, PROMPT[3], 9, PROMPT[4], 0]  # [4, 2]: the prompt's token, another
    target = types.TensorData(data=ids, dtype="int64", shape=[4, 2])
    got = sc.sample(prompt, 1, params, target_prompt_logprobs=target).result().target_prompt_logprobs
    assert got is not None and got.dtype == "float32" and list(got.shape or []) == [4, 2], got
    scored = got.tolist()
    reference = sc.compute_logprobs(prompt).result()
    for i in range(4):  # the prompt's own token: compute_logprobs; the -1 cell: 0.0
        assert abs(scored[i][0] - reference[i + 1]) < 1e-4, (i, scored, reference)
    assert scored[1][1] == 0.0, scored
    # the SDK's CSR form (as from_torch_sparse(ids, pad_value=-1) makes it): unlisted cells are not
    # scored (0.0, like -1), a listed token 0 is; the same numbers as the dense form with -1
    sparse = types.TensorData(data=[5, 0], dtype="int64", shape=[4, 2], sparse_crow_indices=[0, 1, 1, 2, 2],
                              sparse_col_indices=[1, 0])  # fmt: skip
    dense = types.TensorData(data=[-1, 5, -1, -1, 0, -1, -1, -1], dtype="int64", shape=[4, 2])
    got_sparse = sc.sample(prompt, 1, params, target_prompt_logprobs=sparse).result().target_prompt_logprobs
    got_dense = sc.sample(prompt, 1, params, target_prompt_logprobs=dense).result().target_prompt_logprobs
    assert got_sparse is not None and got_dense is not None
    assert got_sparse.tolist() == got_dense.tolist(), (got_sparse, got_dense)
    sparse_scores = got_sparse.tolist()
    assert sparse_scores[0][1] < 0.0 and sparse_scores[2][0] < 0.0, sparse_scores  # listed, token 0 included
    assert [sparse_scores[0][0], *sparse_scores[1], sparse_scores[2][1], *sparse_scores[3]] == [0.0] * 6
    bad_csr = types.TensorData(data=[5], dtype="int64", shape=[4, 1], sparse_crow_indices=[0, 1, 1, 1, 1],
                               sparse_col_indices=[3])  # fmt: skip
    _refused(lambda: sc.sample(prompt, 1, params, target_prompt_logprobs=bad_csr), "target_prompt_logprobs")
    alts = sc.sample(prompt, 1, params, prompt_alt_tokens_k=3).result().prompt_alt_tokens
    assert alts is not None and list(alts.tokens.shape or []) == [4, 3], alts
    drawn, drawn_lps = alts.tokens.tolist(), alts.logprobs.tolist()
    for i in range(4):  # each draw's logprob is the prompt prefix scored with that id
        ref = sc.compute_logprobs(types.ModelInput.from_ints([*PROMPT[: i + 1], drawn[i][0]])).result()[-1]
        assert abs(drawn_lps[i][0] - ref) < 1e-4, (i, drawn, drawn_lps, ref)
    _refused(lambda: sc.sample(prompt, 1, params, prompt_alt_tokens_k=-1), "prompt_alt_tokens_k")


def probe_sample_without_session(ctx: Ctx) -> None:
    _, sc = _sampler(ctx)
    body = {
        "sampling_session_id": sc._sampling_session_id,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
        "sampling_params": {"max_tokens": 1},
    }
    for name, value in (("base_model", ctx.base), ("model_path", "tinker://x/sampler_weights/y")):
        _raw_refused(ctx.wire.post("asample", {**body, name: value}), name, wire=ctx.wire)


def probe_prompt_logprobs_last_n(ctx: Ctx) -> None:
    _, sc = _sampler(ctx)
    prompt = types.ModelInput.from_ints(PROMPT)
    full = sc.compute_logprobs(prompt).result()
    tail = sc.compute_logprobs(prompt, prompt_logprobs_last_n=2).result()
    assert tail[:3] == [None, None, None] and tail[3:] == pytest.approx(full[3:], abs=1e-6), (tail, full)
    _refused(lambda: sc.compute_logprobs(prompt, prompt_logprobs_last_n=9), "prompt_logprobs_last_n")


def _cookbook_datum(prompt: list[int], seq: Any, advantage: float) -> Any:
    full = prompt + list(seq.tokens)
    pad = len(prompt) - 1
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(full[:-1]),
        loss_fn_inputs={
            "target_tokens": full[1:],
            "logprobs": [0.0] * pad + list(seq.logprobs),
            "advantages": [0.0] * pad + [advantage] * len(seq.tokens),
        },
    )
    sid = seq.sequence_id
    return datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id=sid, length=len(prompt)),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(seq.tokens) - 1),
        ],
        loss_fn_inputs=[
            types.PromptProvenanceSpan(sequence_id=sid, offset=1, length=pad),
            types.SampledProvenanceSpan(sequence_id=sid, length=len(seq.tokens)),
        ],
    )


def probe_stable_reinforce_provenance(ctx: Ctx) -> None:
    tc, sc = _sampler(ctx, record=True)
    params = types.SamplingParams(max_tokens=4, seed=2, stop=[])
    seqs = sc.sample(types.ModelInput.from_ints(PROMPT), 2, params).result().sequences
    data = [_cookbook_datum(PROMPT, s, a) for s, a in zip(seqs, (1.0, -1.0), strict=True)]
    out = tc.forward_backward(data, "stable_reinforce").result()
    expected = sum(-a * sum(s.logprobs) for s, a in zip(seqs, (1.0, -1.0), strict=True))
    assert out.metrics["loss:sum"] == pytest.approx(expected, abs=1e-4), "on-policy stable_reinforce is REINFORCE"
    # a sampler without record_stability_info records nothing: the same datum is refused by name
    _, plain = _sampler(ctx)
    unrecorded = plain.sample(types.ModelInput.from_ints(PROMPT), 1, params).result().sequences[0]
    _refused(lambda: tc.forward_backward([_cookbook_datum(PROMPT, unrecorded, 1.0)], "stable_reinforce"), "sequence_id")
    # offsets and lengths are read: a shifted prompt run names its span
    bad = dataclasses.replace(
        data[0],
        model_input_spans=[
            types.PromptProvenanceSpan(sequence_id=seqs[0].sequence_id, offset=1, length=len(PROMPT)),
            *data[0].model_input_spans[1:],
        ],
    )
    _refused(lambda: tc.forward_backward([bad], "stable_reinforce"), "model_input_spans[0]")
    untiled = dataclasses.replace(data[0], loss_fn_input_spans=data[0].loss_fn_input_spans[:1])
    _refused(lambda: tc.forward_backward([untiled], "importance_sampling"), "loss_fn_input_spans")


def probe_inflight(ctx: Ctx) -> None:
    """INF-1..INF-3 over the server: an inflight sampler serves the newest inflight save, not
    ``optim_step``'s weights; an older one follows a newer save; a snapshot stays put."""
    tc = _training(ctx)
    prompt = types.ModelInput.from_ints(PROMPT)
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(PROMPT[:-1]), loss_fn_inputs={"target_tokens": PROMPT[1:]}
    )

    def step() -> None:
        tc.forward_backward([datum], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=0.05)).result()

    def scored(sc: Any) -> list[float]:
        return sc.compute_logprobs(prompt).result()[1:]

    step()
    old = tc.save_weights_and_get_sampling_client(kind="inflight").result()
    snapshot = tc.save_weights_and_get_sampling_client().result()
    w1 = scored(old)
    assert w1 == scored(snapshot)
    step()
    assert scored(old) == w1, "optim_step moved the inflight weights (INF-3)"
    new = tc.save_weights_and_get_sampling_client(kind="inflight").result()
    w2 = scored(new)
    assert w2 != pytest.approx(w1, abs=1e-4), "training did not move the probe"
    assert scored(old) == w2, "an older inflight sampler did not follow the newer save (INF-2)"
    assert scored(snapshot) == w1, "an inflight save moved a snapshot (INF-4)"
    copy = tinker.SamplingClient.from_sampler_handle(old.get_sampler_handle(), api_key=KEY)
    step()
    tc.save_weights_and_get_sampling_client(kind="inflight").result()
    assert scored(copy) == scored(new) != w2, "a handle's client of an inflight session follows it too (INF-7)"


def probe_dimuon(ctx: Ctx) -> None:
    _refused(lambda: _training(ctx, optimizer=types.DimuonOptimizerConfig()), "optimizer_config")
    tc = _training(ctx)
    _refused(lambda: tc.optim_step(types.DimuonParams(learning_rate=1e-3)), "optimizer_params")


def probe_load_weights_refusals(ctx: Ctx) -> None:
    tc = _training(ctx)
    path = tc.save_state("lw").result().path
    session = ctx.wire.session()
    base = {"session_id": session, "model_seq_id": 0, "path": path, "optimizer": False}
    _raw_refused(
        ctx.wire.post("load_weights", {**base, "weights_access_token": "tok"}), "weights_access_token", wire=ctx.wire
    )
    dimuon = {"type": "dimuon", "version": "v1"}
    _raw_refused(
        ctx.wire.post("load_weights", {**base, "model_seq_id": 1, "optimizer_config": dimuon}),
        "optimizer_config",
        wire=ctx.wire,
    )


def probe_project(ctx: Ctx) -> None:
    reply = ctx.wire.post("create_session", {"tags": [], "sdk_version": "0.38.0", "project_id": "proj-1"})
    _raw_refused(reply, "project_id")


def probe_session_metadata(ctx: Ctx) -> None:
    sdk = tinker.ServiceClient(base_url=ctx.url, api_key=KEY, user_metadata={"team": "a"}, display_name="probe")
    tc = sdk.create_lora_training_client(base_model=ctx.base, rank=4).result()
    session_id = tc.model_id.split(":train:")[0]
    info = sdk.create_rest_client().get_session(session_id).result()
    assert info.user_metadata == {"team": "a"} and info.display_name == "probe", info


def probe_chunks(ctx: Ctx) -> None:
    tc = _training(ctx)
    image = types.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4)
    datum = types.Datum(
        model_input=types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[1, 2]), image]),
        loss_fn_inputs={"target_tokens": [2, 3, 4, 5, 6, 7], "weights": [1.0] * 6},
    )
    _refused(lambda: tc.forward_backward([datum], "cross_entropy"), "chunks[1]")
    pointer = types.ImageAssetPointerChunk(format="png", location="s3://x", expected_tokens=2)
    datum = types.Datum(
        model_input=types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[1, 2]), pointer]),
        loss_fn_inputs={"target_tokens": [2, 3, 4, 5], "weights": [1.0] * 4},
    )
    _refused(lambda: tc.forward_backward([datum], "cross_entropy"), "ImageAssetPointerChunk")  # the SDK refuses it
    dmel = {"type": "dmel", "dmel": "AAAA"}
    body = {
        "sampling_session_id": _sampler(ctx)[1]._sampling_session_id,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}, dmel]},
        "sampling_params": {"max_tokens": 1},
    }
    _raw_refused(ctx.wire.post("asample", body), "chunks[1]", wire=ctx.wire)


ENDPOINT_OF = {
    "CopyWeightsRequest": "copy_weights",
    "FuturesRetrieveRequest": "retrieve_futures",
    "GetBillingUsageRequest": "billing/usage/events",
    "GetCurrentCheckpointStorageUsageRequest": "billing/usage/checkpoints/current",
    "JoinSamplingSessionRequest": "join_sampling_session",
    "SessionSearchRequest": "sessions/search",
}


def probe_refused_endpoints(ctx: Ctx) -> None:
    for type_name, endpoint in ENDPOINT_OF.items():
        reply = ctx.wire.post(endpoint, {})
        assert reply.status_code == 400 and "Unsupported" in reply.json()["error"], (type_name, reply.text)
    tc = _training(ctx)
    reply = ctx.wire.post("unload_model", {"model_id": tc.model_id})
    assert reply.status_code == 404, reply.text


def probe_custom_loss_upload(ctx: Ctx) -> None:
    """The SDK uploads a traced loss (the server advertises custom_loss_server_side) and runs it by id."""
    import torch

    def neg_ll(logprobs: Any, weights: Any) -> Any:
        loss = -(logprobs * weights).sum()
        return loss, {"custom/neg_ll:sum": loss}

    sdk = tinker.ServiceClient(base_url=ctx.url, api_key=KEY)  # a fresh session: each loss once per session
    handle = sdk.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1}).result()
    assert handle.loss_id is not None and handle.loss_id.endswith(":loss:0"), handle.loss_id
    tc = sdk.create_lora_training_client(base_model=ctx.base, rank=4, seed=0).result()
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(PROMPT[:-1]),
        loss_fn_inputs={"target_tokens": PROMPT[1:], "weights": [1.0, 0.5, 0.0, 2.0]},
    )
    custom = tc.forward_backward_custom([datum], handle).result()
    builtin = tc.forward([datum], "cross_entropy").result()
    lps = torch.tensor(builtin.loss_fn_outputs[0]["logprobs"].data)
    expected = float(-(lps * torch.tensor([1.0, 0.5, 0.0, 2.0])).sum())
    assert abs(custom.metrics["loss:sum"] - expected) < 1e-4 * max(1.0, abs(expected)), (custom.metrics, expected)
    assert custom.metrics["custom/neg_ll:sum"] == custom.metrics["loss:sum"]


def probe_save_weights_external(ctx: Ctx) -> None:
    """Each field of ``save_weights_external`` is checked by name before anything is written; the
    mock backend's checkpoints are not peft adapters, so a valid request is refused as such. The
    effect (a peft folder with the sampler's logprobs, signed URLs, TTL, age encryption) is checked
    on the torch backend by tests/test_external_weights.py and tests/test_cookbook_compat.py."""
    tc = _training(ctx)
    _refused(lambda: tc.save_weights_external("../x"), "path")
    _refused(lambda: tc.save_weights_external("ext", ttl_seconds=-1), "ttl_seconds")
    _refused(lambda: tc.save_weights_external("ext", age_encryption_recipients=["nope"]), "age_encryption_recipients")
    _refused(lambda: tc.save_weights_external("ext", ttl_seconds=3600), "peft adapters")
    listed = ctx.sdk.create_rest_client().list_checkpoints(tc.model_id).result().checkpoints
    assert listed == [], f"a refused save_weights_external left checkpoints: {listed}"


def probe_checkpoint_metadata_and_ttl(ctx: Ctx) -> None:
    tc = _training(ctx)
    state = tc.save_state("ttl", ttl_seconds=3600, user_metadata={"k": "state"}).result().path
    weights = tc.save_weights_for_sampler("ttl-s", ttl_seconds=3600, user_metadata={"k": "sampler"}).result().path
    listed = {c.tinker_path: c for c in ctx.sdk.create_rest_client().list_checkpoints(tc.model_id).result().checkpoints}
    assert listed[state].expires_at is not None and listed[weights].expires_at is not None
    assert listed[state].user_metadata == {"k": "state"} and listed[weights].user_metadata == {"k": "sampler"}


def probe_run_metadata_and_ids(ctx: Ctx) -> None:
    tc = _training(ctx, user_metadata={"task": "walk"})
    session_id, seq = tc.model_id.split(":train:")
    assert seq.isdigit() and session_id.startswith("session-"), tc.model_id
    rest = ctx.sdk.create_rest_client()
    assert rest.get_training_run(tc.model_id).result().user_metadata == {"task": "walk"}
    path = tc.save_state("meta").result().path
    loaded = ctx.sdk.create_training_client_from_state(path, user_metadata={"task": "loaded"}).result()
    assert rest.get_training_run(loaded.model_id).result().user_metadata == {"task": "loaded"}


def probe_teacher_sampler(ctx: Ctx) -> None:
    """tinker-cookbook's on-policy distillation: create_sampling_client(base_model=..., model_path=...)."""
    tc = _training(ctx)
    path = tc.save_weights_for_sampler("teacher").result().path
    prompt = types.ModelInput.from_ints(PROMPT)
    alone = ctx.sdk.create_sampling_client(model_path=path).result().compute_logprobs(prompt).result()
    both = ctx.sdk.create_sampling_client(model_path=path, base_model=ctx.base).result()
    assert both.compute_logprobs(prompt).result() == alone
    _refused(lambda: ctx.sdk.create_sampling_client(model_path=path, base_model="other/model"), "base_model")


def probe_routing(ctx: Ctx) -> None:
    session = ctx.wire.session()
    unknown = "session-nope:train:0"
    for endpoint, body in (
        ("get_info", {"model_id": unknown}),
        ("forward_backward", None),
        ("optim_step", {"model_id": unknown, "seq_id": 0, "adam_params": {"learning_rate": 1e-3}}),
        ("save_weights", {"model_id": unknown, "path": "x", "seq_id": 0}),
        ("save_weights_for_sampler", {"model_id": unknown, "path": "x", "seq_id": 0}),
        ("load_weights", {"model_id": unknown, "path": "tinker://a/weights/b", "seq_id": 0}),
        ("create_model", {"session_id": "session-nope", "model_seq_id": 0, "base_model": ctx.base}),
        (
            "create_sampling_session",
            {"session_id": "session-nope", "sampling_session_seq_id": 0, "base_model": ctx.base},
        ),
        ("asample", {"sampling_session_id": "sampler-nope", "prompt": {"chunks": []}, "sampling_params": {}}),
        ("retrieve_future", {"request_id": "no-such-request"}),
    ):
        if body is None:  # forward and forward_backward: the SDK's protobuf body
            for forward_only in (False, True):
                raw = fb_body(unknown, 0, [1, 2, 3], forward_only=forward_only)
                reply = ctx.wire.http.post(endpoint, content=raw, headers=proto_headers())
                assert reply.status_code == 404 and "NotFoundError" in reply.json()["error"], reply.text
            continue
        reply = ctx.wire.post(endpoint, body)
        assert reply.status_code == 404 and "NotFoundError" in reply.json()["error"], (endpoint, reply.text)
    assert ctx.wire.post("session_heartbeat", {"session_id": "session-nope"}).status_code == 410
    assert ctx.wire.post("session_heartbeat", {"session_id": session}).status_code == 200


PROBES: dict[str, tuple[Callable[[Ctx], None], tuple[str, ...]]] = {
    "sample extras": (
        probe_sample_extras,
        (
            "SampleRequest.topk_sample_logprobs",
            "SampleRequest.target_prompt_logprobs",
            "SampleRequest.prompt_alt_tokens_k",
        ),
    ),
    "sample without session": (probe_sample_without_session, ("SampleRequest.base_model", "SampleRequest.model_path")),
    "prompt_logprobs_last_n": (probe_prompt_logprobs_last_n, ("SampleRequest.prompt_logprobs_last_n",)),
    "stable_reinforce provenance": (
        probe_stable_reinforce_provenance,
        (
            "SampleRequest.record_stability_info",
            "Datum.model_input_spans",
            "Datum.loss_fn_input_spans",
            *(
                f"{t}.{f}"
                for t in ("PromptProvenanceSpan", "SampledProvenanceSpan")
                for f in ("sequence_id", "offset", "length")
            ),
        ),
    ),
    "inflight": (probe_inflight, ("SaveWeightsForSamplerRequest.kind",)),
    "dimuon": (
        probe_dimuon,
        (
            "CreateModelRequest.optimizer_config",
            *(k for k in FIELDS if k.startswith(("DimuonOptimizerConfig.", "DimuonParams."))),
        ),
    ),
    "load_weights refusals": (
        probe_load_weights_refusals,
        ("LoadWeightsRequest.weights_access_token", "LoadWeightsRequest.optimizer_config"),
    ),
    "project": (probe_project, ("CreateSessionRequest.project_id",)),
    "session metadata": (
        probe_session_metadata,
        ("CreateSessionRequest.user_metadata", "CreateSessionRequest.display_name"),
    ),
    "chunks": (
        probe_chunks,
        tuple(k for k in FIELDS if k.startswith(("ImageChunk.", "ImageAssetPointerChunk.", "DmelChunk."))),
    ),
    "refused endpoints": (
        probe_refused_endpoints,
        tuple(k for k in FIELDS if k.split(".")[0] in (*ENDPOINT_OF, "UnloadModelRequest")),
    ),
    "save_weights_external": (
        probe_save_weights_external,
        tuple(
            k for k in FIELDS if k.startswith("SaveWeightsExternalRequest.") and k != "SaveWeightsExternalRequest.type"
        ),
    ),
    "custom loss upload": (
        probe_custom_loss_upload,
        tuple(k for k in FIELDS if k.startswith("CreateCustomLossRequest.") and FIELDS[k].status == "effect"),
    ),
    "checkpoint ttl": (
        probe_checkpoint_metadata_and_ttl,
        (
            "SaveWeightsRequest.ttl_seconds",
            "SaveWeightsForSamplerRequest.ttl_seconds",
            "SaveWeightsRequest.user_metadata",
            "SaveWeightsForSamplerRequest.user_metadata",
        ),
    ),
    "run metadata and ids": (
        probe_run_metadata_and_ids,
        (
            "CreateModelRequest.user_metadata",
            "CreateModelRequest.model_seq_id",
            "LoadWeightsRequest.user_metadata",
            "LoadWeightsRequest.model_seq_id",
        ),
    ),
    "teacher sampler": (
        probe_teacher_sampler,
        ("CreateSamplingSessionRequest.base_model", "CreateSamplingSessionRequest.model_path"),
    ),
    "routing": (
        probe_routing,
        (
            "FutureRetrieveRequest.request_id",
            "GetInfoRequest.model_id",
            "CreateModelRequest.session_id",
            "CreateSamplingSessionRequest.session_id",
            "SampleRequest.sampling_session_id",
            "SessionHeartbeatRequest.session_id",
            "OptimStepRequest.model_id",
            "SaveWeightsRequest.model_id",
            "SaveWeightsForSamplerRequest.model_id",
            "LoadWeightsRequest.model_id",
            "ForwardBackwardRequest.model_id",
            "ForwardRequest.model_id",
        ),
    ),
}
PROBED: dict[str, str] = {field: name for name, (_, fields) in PROBES.items() for field in fields}
