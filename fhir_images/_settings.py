"""Settings from the environment, read once, in one place.

| variable | what |
|---|---|
| ``FHIR_BASE_URL`` | the FHIR server's base URL |
| ``FHIR_TOKEN`` | a bearer token for it (else ``FHIR_USERNAME``/``FHIR_PASSWORD``) |
| ``FHIR_CA_BUNDLE`` | a CA bundle for a private CA (TLS verification is always on) |
| ``FHIR_SERVER_PROFILE`` | force a server profile instead of the one the server's answers choose |
| ``FHIR_IMAGES_OUTBOX`` | the outbox folder (default ``./fhir-images-outbox``) |
| ``FHIR_IMAGES_HOOK_SECRET`` | the server hook's shared secret (16 characters or more) |
| ``FHIR_IMAGES_MAX_*`` | input limits (see :class:`fhir_images.Limits`) |

The library itself never reads the environment behind a caller's back: a caller builds a
:class:`Settings` (``Settings.from_env()``) and passes what it holds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._exceptions import InvalidSetting
from ._intake import Limits

DEFAULT_OUTBOX = Path("fhir-images-outbox")


@dataclass(frozen=True)
class Settings:
    base_url: str | None = None
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    server_profile: str | None = None
    outbox: Path = DEFAULT_OUTBOX
    hook_secret: str | None = field(default=None, repr=False)
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value else None

        limits = Limits.from_env(env)
        outbox = get("FHIR_IMAGES_OUTBOX")
        return cls(
            base_url=get("FHIR_BASE_URL"),
            token=get("FHIR_TOKEN"),
            username=get("FHIR_USERNAME"),
            password=env.get("FHIR_PASSWORD", ""),
            ca_bundle=get("FHIR_CA_BUNDLE"),
            server_profile=get("FHIR_SERVER_PROFILE"),
            outbox=Path(outbox) if outbox else DEFAULT_OUTBOX,
            hook_secret=get("FHIR_IMAGES_HOOK_SECRET"),
            limits=limits,
        )

    def require_hook_secret(self) -> str:
        if not self.hook_secret or len(self.hook_secret) < 16:
            raise InvalidSetting("set FHIR_IMAGES_HOOK_SECRET to a secret of 16 characters or more")
        return self.hook_secret
