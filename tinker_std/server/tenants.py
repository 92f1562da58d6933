"""API keys and the tenants they belong to.

A server either runs *open* (no keys configured: any ``X-API-Key`` is accepted and every caller is
the one tenant ``local``) or *keyed*: each accepted key maps to a tenant name, and any other key is
answered 401. Keys come from a keys file, the ``TINKER_STD_API_KEYS`` environment variable, or a
single ``api_key`` (tenant ``default``):

- keys file: JSON ``{"tml-key": "tenant", ...}``, or lines ``tml-key tenant`` (``#`` comments);
- environment: ``TINKER_STD_API_KEYS="tml-a=alice,tml-b=bob"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["KEYS_ENV", "OPEN_TENANT", "Tenants"]

KEYS_ENV = "TINKER_STD_API_KEYS"
OPEN_TENANT = "local"


class Tenants:
    """Maps an ``X-API-Key`` to its tenant; ``tenant_of`` is ``None`` for a refused key."""

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self.keys = dict(keys or {})
        for key, tenant in self.keys.items():
            if not key or not tenant:
                raise ValueError("API keys and tenant names must not be empty")

    @property
    def open(self) -> bool:
        return not self.keys

    def tenant_of(self, api_key: str | None) -> str | None:
        if self.open:
            return OPEN_TENANT
        return self.keys.get(api_key or "")

    @classmethod
    def load(
        cls, api_key: str | None = None, keys_file: str | os.PathLike[str] | None = None, use_env: bool = True
    ) -> Tenants:
        """Keys from all sources given (a key named twice keeps its last tenant)."""
        keys: dict[str, str] = {}
        if api_key:
            keys[api_key] = "default"
        if keys_file is not None:
            keys.update(parse_keys_file(Path(keys_file).read_text()))
        if use_env and os.environ.get(KEYS_ENV):
            keys.update(parse_keys_env(os.environ[KEYS_ENV]))
        return cls(keys)


def parse_keys_file(text: str) -> dict[str, str]:
    """A keys file's ``{key: tenant}``: JSON object or ``key tenant`` lines."""
    if text.lstrip().startswith("{"):
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError('a JSON keys file must be an object {"key": "tenant"}')
        return {str(k): v for k, v in data.items()}
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"keys file line {number}: expected 'KEY TENANT', got {raw!r}")
        keys[parts[0]] = parts[1]
    return keys


def parse_keys_env(text: str) -> dict[str, str]:
    """``key=tenant,key=tenant`` pairs."""
    keys: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, tenant = item.partition("=")
        if not sep:
            raise ValueError(f"{KEYS_ENV}: expected KEY=TENANT, got {item!r}")
        keys[key.strip()] = tenant.strip()
    return keys
