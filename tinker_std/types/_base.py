"""Pydantic base classes shared by the wire types."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """A request type: unknown fields are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ResponseModel(BaseModel):
    """A response type: unknown fields are ignored so that servers may add fields."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())
