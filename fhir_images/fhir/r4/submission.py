"""Where an R4 submission keeps what delivery adjusts: the Media's Binary URL and the moment
the Consent was given."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..common import parse_instant
from ..submission import Submission as _Submission


class Submission(_Submission):
    image_type = "Media"

    def _set_content_url(self, image: dict[str, Any], url: str) -> None:
        image["content"]["url"] = url

    def _consent_moment(self, consent: dict[str, Any]) -> datetime | None:
        return parse_instant(consent.get("dateTime"))
