"""Where an R5 submission keeps what delivery adjusts: the DocumentReference's Binary URL and
the moment the Consent was given (its period's start: R5's ``date`` has no time of day)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..common import parse_instant
from ..submission import Submission as _Submission


class Submission(_Submission):
    image_type = "DocumentReference"

    def _set_content_url(self, image: dict[str, Any], url: str) -> None:
        image["content"][0]["attachment"]["url"] = url

    def _consent_moment(self, consent: dict[str, Any]) -> datetime | None:
        period = consent.get("period") or {}
        return parse_instant(period.get("start") or consent.get("date"))
