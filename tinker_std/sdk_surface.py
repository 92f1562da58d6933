"""Every field of every request type of the ``tinker`` SDK 0.38, and what tinker-std does with it
(spec SDK-1: nothing silently ignored).

``FIELDS`` maps ``"Type.field"`` (a pydantic model or dataclass in ``tinker.types`` that the SDK
sends) to a ``FieldRule``:

- ``effect``: a non-default value has the documented effect (``why`` says which, ``spec`` where);
- ``refused``: a non-default value is refused with a typed error naming the field, or the whole
  request type belongs to an endpoint the server refuses (``why`` says why);
- ``fixed``: a type tag; the SDK's own type admits only its literal, so no other value can be sent;
- ``descriptive``: describes the caller or the transport and asks for no behaviour (the SDK
  version, telemetry, ordering numbers the server does not need); accepted as such.

``tests/test_sdk_surface_fields.py`` walks ``tinker.types`` and fails for a field missing here (a
new SDK release) or listed here but gone, and checks the rules against a running server;
``scripts/sdk-surface.py`` renders the table in docs/server.md and counts the SDK items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FieldRule", "FIELDS", "REQUEST_TYPES", "Status"]

Status = Literal["effect", "refused", "fixed", "descriptive"]


@dataclass(frozen=True)
class FieldRule:
    status: Status
    why: str
    spec: str = ""


def _e(why: str, spec: str = "") -> FieldRule:
    return FieldRule("effect", why, spec)


def _r(why: str, spec: str = "SDK-5") -> FieldRule:
    return FieldRule("refused", why, spec)


FIXED = FieldRule("fixed", "type tag: the SDK's type admits only its literal; the endpoint defines the request")
ROUTING = "routes the request; an unknown or foreign id is NotFoundError (404)"
ORDER = "the request's place in its model's order (ORD); a gap waits, a retry answers the original"


def _endpoint(type_name: str, fields: tuple[str, ...], why: str) -> dict[str, FieldRule]:
    return {f"{type_name}.{name}": _r(why, "SDK-1") for name in fields}


FIELDS: dict[str, FieldRule] = {
    # -- sessions and plumbing ------------------------------------------------------------------
    "ClientConfigRequest.sdk_version": FieldRule(
        "descriptive", "the SDK's version; every version gets the same config"
    ),
    "CreateSessionRequest.tags": FieldRule(
        "descriptive", "labels for the hosted console and session search (refused); kept on the session"
    ),
    "CreateSessionRequest.user_metadata": _e("recorded on the session: RestClient.get_session returns it"),
    "CreateSessionRequest.display_name": _e("recorded on the session: RestClient.get_session returns it"),
    "CreateSessionRequest.sdk_version": FieldRule("descriptive", "the SDK's version, shown in the access log"),
    "CreateSessionRequest.project_id": _r(
        "projects are not part of tinker-std: a project id is a BadRequestError naming project_id"
    ),
    "CreateSessionRequest.type": FIXED,
    "SessionHeartbeatRequest.session_id": _e("keeps the session alive; an unknown session is answered 410"),
    "SessionHeartbeatRequest.type": FIXED,
    "TelemetrySendRequest.events": FieldRule(
        "descriptive", "SDK telemetry: accepted and not kept (the server has no telemetry store)"
    ),
    "TelemetrySendRequest.platform": FieldRule("descriptive", "SDK telemetry: accepted and not kept"),
    "TelemetrySendRequest.sdk_version": FieldRule("descriptive", "SDK telemetry: accepted and not kept"),
    "TelemetrySendRequest.session_id": FieldRule("descriptive", "SDK telemetry: accepted and not kept"),
    "TelemetrySendRequest.process_uuid": FieldRule("descriptive", "SDK telemetry: accepted and not kept"),
    "FutureRetrieveRequest.request_id": _e(ROUTING),
    "FutureRetrieveRequest.allow_metadata_only": FieldRule(
        "descriptive", "permits (does not require) a metadata-only answer; this server always answers inline"
    ),
    "GetInfoRequest.model_id": _e(ROUTING),
    "GetInfoRequest.type": FIXED,
    # -- training models ------------------------------------------------------------------------
    "CreateModelRequest.session_id": _e("the session that owns the model; " + ROUTING),
    "CreateModelRequest.model_seq_id": _e(
        "the model id is '{session_id}:train:{model_seq_id}'; a retry answers the original"
    ),
    "CreateModelRequest.base_model": _e("the model trained (LORA-1); unknown is NotFoundError", "LORA-6"),
    "CreateModelRequest.user_metadata": _e("recorded on the training run (RestClient.get_training_run)"),
    "CreateModelRequest.lora_config": _e("rank, seed and targets of the adapter", "LORA-1"),
    "CreateModelRequest.optimizer_config": _r(
        "only AdamW: DimuonOptimizerConfig is a BadRequestError naming optimizer_config"
    ),
    "CreateModelRequest.type": FIXED,
    "LoraConfig.rank": _e("adapter rank", "LORA-1"),
    "LoraConfig.seed": _e("adapter initialisation seed", "LORA-2"),
    "LoraConfig.train_unembed": _e("adapts the output layer", "LORA-1"),
    "LoraConfig.train_mlp": _e("adapts the MLP layers", "LORA-1"),
    "LoraConfig.train_attn": _e("adapts the attention layers", "LORA-1"),
    "LoadWeightsRequest.model_id": _e("load_state into this model, at its seq_id", "CKPT-4"),
    "LoadWeightsRequest.seq_id": _e(ORDER, "ORD-1"),
    "LoadWeightsRequest.session_id": _e("create a model from a checkpoint in this session", "CKPT-4"),
    "LoadWeightsRequest.model_seq_id": _e("the created model's id, as for create_model"),
    "LoadWeightsRequest.base_model": _e(
        "must be the checkpoint's base model, else BadRequestError naming base_model", "CKPT-4"
    ),
    "LoadWeightsRequest.user_metadata": _e("recorded on the created training run"),
    "LoadWeightsRequest.path": _e("the checkpoint loaded", "CKPT-4"),
    "LoadWeightsRequest.optimizer": _e("also restore the AdamW state", "CKPT-5"),
    "LoadWeightsRequest.optimizer_config": _r("only AdamW: a non-Adam optimizer_config is a BadRequestError naming it"),
    "LoadWeightsRequest.weights_access_token": _r(
        "no cross-account weight access: a token is a BadRequestError naming it"
    ),
    "LoadWeightsRequest.type": FIXED,
    "UnloadModelRequest.model_id": _r(
        "no SDK 0.38 method sends it; models are freed when their session ends (404)", "SDK-1"
    ),
    "UnloadModelRequest.type": FIXED,
    # -- forward / backward ---------------------------------------------------------------------
    "ForwardBackwardRequest.forward_backward_input": _e("the data, loss and config", "FB-2"),
    "ForwardBackwardRequest.model_id": _e(ROUTING),
    "ForwardBackwardRequest.seq_id": _e(ORDER, "ORD-1"),
    "ForwardRequest.forward_input": _e("the data, loss and config", "FB-1"),
    "ForwardRequest.model_id": _e(ROUTING),
    "ForwardRequest.seq_id": _e(ORDER, "ORD-1"),
    "ForwardBackwardInput.data": _e("the datums", "FB-2"),
    "ForwardBackwardInput.loss_fn": _e(
        "the built-in loss, or 'custom' with loss_fn_config {'loss_id': ...} for an uploaded loss (spec 12: "
        "forward_backward runs it, in one pass where the backend has the seam, CLG-4; forward scores it without "
        "gradient, CLG-5); unknown names are BadRequestError",
        "LOSS-8",
    ),
    "ForwardBackwardInput.loss_fn_config": _e(
        "the loss's config keys; unknown keys and string values are BadRequestError", "LOSS-11"
    ),
    "Datum.model_input": _e("the input tokens", "ALN-1"),
    "Datum.loss_fn_inputs": _e("the loss inputs; unknown keys are BadRequestError", "LOSS-10"),
    "Datum.model_input_spans": _e("provenance: checked for every loss, read by stable_reinforce", "LOSS-17"),
    "Datum.loss_fn_input_spans": _e("provenance: checked for every loss, read by stable_reinforce", "LOSS-17"),
    "PromptProvenanceSpan.sequence_id": _e("the recorded sequence whose prompt the run reproduces", "LOSS-18"),
    "PromptProvenanceSpan.offset": _e("where the run starts in that prompt", "LOSS-18"),
    "PromptProvenanceSpan.length": _e("how many positions the run covers", "LOSS-17"),
    "SampledProvenanceSpan.sequence_id": _e("the recorded sequence whose sampled tokens the run reproduces", "LOSS-18"),
    "SampledProvenanceSpan.offset": _e("where the run starts in those tokens", "LOSS-18"),
    "SampledProvenanceSpan.length": _e("how many positions the run covers", "LOSS-17"),
    "ModelInput.chunks": _e("the token chunks", "TYP-1"),
    "EncodedTextChunk.tokens": _e("token ids", "TYP-1"),
    "EncodedTextChunk.type": FIXED,
    "ImageChunk.data": _r("image chunks are not supported: BadRequestError naming the chunk", "SDK-1"),
    "ImageChunk.format": _r("image chunks are not supported", "SDK-1"),
    "ImageChunk.expected_tokens": _r("image chunks are not supported", "SDK-1"),
    "ImageChunk.type": _r("image chunks are not supported", "SDK-1"),
    "ImageAssetPointerChunk.format": _r(
        "the SDK 0.38 cannot send image pointers (ValueError naming the type)", "SDK-1"
    ),
    "ImageAssetPointerChunk.location": _r("the SDK 0.38 cannot send image pointers", "SDK-1"),
    "ImageAssetPointerChunk.expected_tokens": _r("the SDK 0.38 cannot send image pointers", "SDK-1"),
    "ImageAssetPointerChunk.type": _r("the SDK 0.38 cannot send image pointers", "SDK-1"),
    "DmelChunk.dmel": _r("audio (dmel) chunks are not supported: BadRequestError naming the chunk", "SDK-1"),
    "DmelChunk.type": _r("audio (dmel) chunks are not supported", "SDK-1"),
    "TensorData.dtype": _e("float32 or int64 (int32 widened)", "TYP-4"),
    "TensorData.shape": _e("row-major shape", "TYP-4"),
    "TensorData.sparse_crow_indices": _e("CSR row pointers of a sparse 2-D tensor, densified on arrival", "TYP-4"),
    "TensorData.sparse_col_indices": _e("CSR column indices of a sparse 2-D tensor", "TYP-4"),
    # -- server-side custom losses (spec 12) ----------------------------------------------------
    "CreateCustomLossRequest.session_id": _e("the session that owns the loss (only its models can run it); " + ROUTING),
    "CreateCustomLossRequest.custom_loss_seq_id": _e(
        "the loss id is '{session_id}:loss:{custom_loss_seq_id}'; a retry answers the original, another body "
        "is ConflictError"
    ),
    "CreateCustomLossRequest.name": _e("the loss's name, in its errors; must be an identifier", "CLG-1"),
    "CreateCustomLossRequest.inputs": _e(
        "the graph's inputs in call order with their ranks; checked against every datum", "CLG-3"
    ),
    "CreateCustomLossRequest.graph": _e(
        "validated against the allow-list before it is stored (BadRequestError naming the node), then run as "
        "the loss of forward_backward",
        "CLG-1",
    ),
    "CreateCustomLossRequest.type": FIXED,
    # -- optimizer ------------------------------------------------------------------------------
    "OptimStepRequest.optim_params": _e(
        "AdamParams: one AdamW step; DimuonParams is a BadRequestError naming optimizer_params", "OPT-9"
    ),
    "OptimStepRequest.model_id": _e(ROUTING),
    "OptimStepRequest.seq_id": _e(ORDER, "ORD-1"),
    "OptimStepRequest.type": FIXED,
    "AdamParams.learning_rate": _e("AdamW learning rate", "OPT-1"),
    "AdamParams.beta1": _e("AdamW beta1", "OPT-1"),
    "AdamParams.beta2": _e("AdamW beta2", "OPT-1"),
    "AdamParams.eps": _e("AdamW epsilon", "OPT-1"),
    "AdamParams.weight_decay": _e("decoupled weight decay", "OPT-2"),
    "AdamParams.grad_clip_norm": _e("global-norm clipping", "OPT-4"),
    "AdamOptimizerConfig.type": FIXED,
    "DimuonOptimizerConfig.type": _r("the Dimuon optimizer is not part of spec 0.2 (optimizer_config is refused)"),
    "DimuonOptimizerConfig.version": _r("the Dimuon optimizer is not part of spec 0.2"),
    "DimuonParams.type": _r("Dimuon steps are not part of spec 0.2: BadRequestError naming optimizer_params"),
    "DimuonParams.learning_rate": _r("Dimuon steps are not part of spec 0.2"),
    "DimuonParams.grad_clip_norm": _r("Dimuon steps are not part of spec 0.2"),
    "DimuonParams.beta1": _r("Dimuon steps are not part of spec 0.2"),
    # -- checkpoints ----------------------------------------------------------------------------
    "SaveWeightsRequest.model_id": _e(ROUTING),
    "SaveWeightsRequest.path": _e("the checkpoint name", "CKPT-1"),
    "SaveWeightsRequest.seq_id": _e(ORDER, "ORD-1"),
    "SaveWeightsRequest.ttl_seconds": _e(
        "the server deletes the checkpoint when it expires (RestClient shows expires_at)"
    ),
    "SaveWeightsRequest.overwrite": _e("replace an existing checkpoint of that name", "CKPT-3"),
    "SaveWeightsRequest.user_metadata": _e("recorded on the checkpoint (RestClient listings)"),
    "SaveWeightsRequest.type": FIXED,
    "SaveWeightsForSamplerRequest.model_id": _e(ROUTING),
    "SaveWeightsForSamplerRequest.path": _e("the checkpoint name; without one, a snapshot sampler", "CKPT-2"),
    "SaveWeightsForSamplerRequest.sampling_session_seq_id": FieldRule(
        "descriptive", "the SDK's counter for the snapshot sampler it asks for; the server names samplers itself"
    ),
    "SaveWeightsForSamplerRequest.kind": _e(
        "'inflight': samplers that serve the training client's newest inflight save; a path with it is refused",
        "INF-1",
    ),
    "SaveWeightsForSamplerRequest.seq_id": _e(ORDER, "ORD-1"),
    "SaveWeightsForSamplerRequest.ttl_seconds": _e("the server deletes the checkpoint when it expires"),
    "SaveWeightsForSamplerRequest.user_metadata": _e("recorded on the checkpoint (RestClient listings)"),
    "SaveWeightsForSamplerRequest.type": FIXED,
    "SaveWeightsExternalRequest.model_id": _e(ROUTING),
    "SaveWeightsExternalRequest.path": _e(
        "the name: tinker://<model>/external_weights/<name>, a standard peft adapter folder (docs/server.md)"
    ),
    "SaveWeightsExternalRequest.seq_id": _e(ORDER, "ORD-1"),
    "SaveWeightsExternalRequest.ttl_seconds": _e("the server deletes the export when it expires"),
    "SaveWeightsExternalRequest.age_encryption_recipients": _e(
        "every exported file is age-encrypted to the recipients and stored as <file>.age (pyrage)"
    ),
    "SaveWeightsExternalRequest.type": FIXED,
    # -- sampling -------------------------------------------------------------------------------
    "CreateSamplingSessionRequest.session_id": _e("the session that owns the sampler; " + ROUTING),
    "CreateSamplingSessionRequest.sampling_session_seq_id": FieldRule(
        "descriptive", "the SDK's counter for the sampler it asks for; the server names samplers itself"
    ),
    "CreateSamplingSessionRequest.base_model": _e("sample the base model, or check a checkpoint's base", "SMP-15"),
    "CreateSamplingSessionRequest.model_path": _e("sample this checkpoint", "SMP-15"),
    "CreateSamplingSessionRequest.type": FIXED,
    "SampleRequest.num_samples": _e("number of sequences", "SMP-1"),
    "SampleRequest.prompt": _e("the prompt", "SMP-1"),
    "SampleRequest.sampling_params": _e("how to sample", "SMP-2"),
    "SampleRequest.base_model": _r(
        "sampling goes through a sampling session: base_model here is a BadRequestError", "SDK-1"
    ),
    "SampleRequest.model_path": _r(
        "sampling goes through a sampling session: model_path here is a BadRequestError", "SDK-1"
    ),
    "SampleRequest.sampling_session_id": _e("the sampler; " + ROUTING),
    "SampleRequest.seq_id": FieldRule(
        "descriptive", "the SDK's counter within the sampling session; sample requests are independent (no order)"
    ),
    "SampleRequest.prompt_logprobs": _e("return prompt logprobs", "SMP-13"),
    "SampleRequest.topk_prompt_logprobs": _e("return top-k prompt logprobs", "SMP-17"),
    "SampleRequest.topk_sample_logprobs": _e("top-k raw logprobs of every sampled token", "SDK-6"),
    "SampleRequest.target_prompt_logprobs": _e(
        "logprobs of chosen ids at every prompt position (dense or CSR: unlisted cells not scored)", "SDK-7"
    ),
    "SampleRequest.prompt_alt_tokens_k": _e("k draws at every prompt position after the first", "SDK-8"),
    "SampleRequest.prompt_logprobs_last_n": _e("score only the last n prompt positions", "SDK-4"),
    "SampleRequest.record_stability_info": _e("record the sample for stable_reinforce", "SDK-3"),
    "SampleRequest.type": FIXED,
    "SamplingParams.max_tokens": _e("length limit", "SMP-2"),
    "SamplingParams.seed": _e("seeded draws", "SMP-12"),
    "SamplingParams.stop": _e("stop strings or tokens", "SMP-5"),
    "SamplingParams.temperature": _e("temperature", "SMP-10"),
    "SamplingParams.top_k": _e("top-k filter", "SMP-11"),
    "SamplingParams.top_p": _e("top-p filter", "SMP-11"),
    # -- endpoints the server refuses as a whole (docs/server.md) --------------------------------
    **_endpoint(
        "CopyWeightsRequest",
        ("session_id", "model_seq_id", "destination_project_id", "source_path", "ttl_seconds", "weights_access_token"),
        "copy_weights is refused: no projects to copy between",
    ),
    **_endpoint(
        "FuturesRetrieveRequest",
        ("target", "prev_cursor", "timeout", "retrieved_request_ids"),
        "batch future polling is refused (off in the client config)",
    ),
    **_endpoint("GetBillingUsageRequest", ("starting_on", "ending_before"), "billing is not part of tinker-std"),
    **_endpoint(
        "GetCurrentCheckpointStorageUsageRequest", ("project_id",), "storage accounting is not part of tinker-std"
    ),
    **_endpoint(
        "JoinSamplingSessionRequest",
        ("sampling_session_id", "type"),
        "joining sampling sessions is refused (off in the client config)",
    ),
    **_endpoint(
        "SessionSearchRequest",
        ("session_id", "project_ids", "user_metadata", "display_name", "owner", "statuses", "limit", "cursor"),
        "session search is refused",
    ),
}

#: The request types walked (every ``tinker.types`` class with a field in ``FIELDS``).
REQUEST_TYPES: tuple[str, ...] = tuple(sorted({key.split(".", 1)[0] for key in FIELDS}))

#: Public SDK 0.38 client methods (``*_async`` twins counted with their method) that the server
#: refuses, with why (docs/server.md); every other method is served.
SERVER_REFUSED_METHODS: dict[str, str] = {
    "ServiceClient.copy_weights": "no projects to copy between",
    "RestClient.copy_weights": "no projects to copy between",
    "RestClient.assign_session_project": "no projects",
    "RestClient.export_session_trace": "no traces",
    "RestClient.search_sessions": "no session search",
    "RestClient.get_current_checkpoint_storage_usage": "hosted-service accounting",
    "RestClient.get_audit_log": "hosted-service accounting",
    "RestClient.get_billing_usage": "hosted-service accounting",
    "RestClient.whoami": "answered by the SDK from a JWT; the server uses API keys",
}
#: Methods that never reach a server (client-local in the SDK).
CLIENT_LOCAL_METHODS: frozenset[str] = frozenset(
    {
        "ServiceClient.get_console_url",
        "ServiceClient.get_telemetry",
        "TrainingClient.get_console_url",
        "TrainingClient.get_telemetry",
        "SamplingClient.get_telemetry",
        "SamplingClient.on_queue_state_change",
        "SamplingClient.create",
        "RestClient.get_telemetry",
    }
)
