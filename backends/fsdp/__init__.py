"""The FSDP backend: ``TorchEngine`` sharded over ``torch.distributed`` ranks (FSDP2, DCP).

``ServiceClient(backend="fsdp", world_size=2)`` starts two rank processes (gloo on CPU, NCCL on
GPUs) and shards every base model over them; see ``backend.py`` and ``docs/fsdp.md``.
"""

from .backend import FsdpBackend, FsdpBackendBF16, FsdpBackendFP32
from .group import RankFailedError, WorkerStartError

__all__ = ["FsdpBackend", "FsdpBackendBF16", "FsdpBackendFP32", "RankFailedError", "WorkerStartError"]
