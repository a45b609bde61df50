"""The base of every result the public API returns: a pydantic model, so that what an
integrator stores (server ids, labels, the decision and its reasons, audit ids) round-trips
through ``model_dump()`` / ``model_validate()`` and JSON (``model_dump_json()``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
