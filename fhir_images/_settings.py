"""Settings from the environment, read once, in one place.

| variable | what |
|---|---|
| ``FHIR_BASE_URL`` | the FHIR server's base URL |
| ``FHIR_TOKEN`` | a bearer token for it (else ``FHIR_USERNAME``/``FHIR_PASSWORD``) |
| ``FHIR_CA_BUNDLE`` | a CA bundle for a private CA (TLS verification is always on) |
| ``FHIR_SERVER_PROFILE`` | force a server profile instead of the one the server's answers choose |
| ``FHIR_IMAGES_FHIR_VERSION`` | force the FHIR version (``4.0``, ``5.0``), not the server's |
| ``FHIR_IMAGES_OUTBOX`` | the outbox folder (default ``./fhir-images-outbox``) |
| ``FHIR_IMAGES_HOOK_SECRET`` | the server hook's shared secret (16 characters or more) |
| ``FHIR_IMAGES_MAX_*`` | input limits (see :class:`fhir_images.Limits`) |
| ``FHIR_IMAGES_RETENTION_SCHEDULE`` | the retention schedule ``destroy`` applies: ``england`` |
| | (default), ``scotland``, ``wales``, ``northern-ireland``, or one registered |
| ``FHIR_IMAGES_CACHE_DIR`` | server probe reports (default ``~/.cache/fhir-images``) |
| ``FHIR_IMAGES_ACCEPT_RISK`` | server risks accepted knowingly, by name (``no-security-search``) |
| ``FHIR_IMAGES_AUDIT`` | where AuditEvents go when the server refuses them: an audit |
| | repository's FHIR base URL, or ``file:/path/audit.jsonl`` |
| ``FHIR_IMAGES_AUDIT_TOKEN`` | a bearer token for that repository (the server's is never sent) |

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
    """What the command line reads from the environment (the table above), for a caller that
    wants the same: ``Settings.from_env()``."""

    base_url: str | None = None
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    server_profile: str | None = None
    outbox: Path = DEFAULT_OUTBOX
    hook_secret: str | None = field(default=None, repr=False)
    limits: Limits = field(default_factory=Limits)
    cache_dir: Path | None = None
    accept_risks: frozenset[str] = frozenset()
    audit: str | None = None
    audit_token: str | None = field(default=None, repr=False)
    fhir_version: str | None = None
    retention_schedule: str = "england"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value else None

        limits = Limits.from_env(env)
        outbox = get("FHIR_IMAGES_OUTBOX")
        cache = get("FHIR_IMAGES_CACHE_DIR")
        if cache is None:
            xdg = get("XDG_CACHE_HOME")
            cache = (
                str(Path(xdg) / "fhir-images") if xdg else str(Path.home() / ".cache/fhir-images")
            )
        risks = frozenset(
            r.strip() for r in (get("FHIR_IMAGES_ACCEPT_RISK") or "").split(",") if r.strip()
        )
        from .fhir.probe import ACCEPTABLE_RISKS

        unknown = risks - set(ACCEPTABLE_RISKS)
        if unknown:
            raise InvalidSetting(
                f"FHIR_IMAGES_ACCEPT_RISK names a risk that cannot be accepted; it may list: "
                f"{', '.join(ACCEPTABLE_RISKS)}"
            )
        audit = get("FHIR_IMAGES_AUDIT")
        if audit is not None and not audit.startswith(("http://", "https://", "file:")):
            raise InvalidSetting("FHIR_IMAGES_AUDIT must be an http(s) FHIR base URL or file:/path")
        fhir_version = get("FHIR_IMAGES_FHIR_VERSION")
        if fhir_version is not None:
            from .fhir.version import supported_versions

            if fhir_version not in supported_versions():
                raise InvalidSetting(
                    "FHIR_IMAGES_FHIR_VERSION must be one of " + ", ".join(supported_versions())
                )
        return cls(
            fhir_version=fhir_version,
            base_url=get("FHIR_BASE_URL"),
            token=get("FHIR_TOKEN"),
            username=get("FHIR_USERNAME"),
            password=env.get("FHIR_PASSWORD", ""),
            ca_bundle=get("FHIR_CA_BUNDLE"),
            server_profile=get("FHIR_SERVER_PROFILE"),
            outbox=Path(outbox) if outbox else DEFAULT_OUTBOX,
            hook_secret=get("FHIR_IMAGES_HOOK_SECRET"),
            limits=limits,
            cache_dir=Path(cache),
            accept_risks=risks,
            audit=audit,
            audit_token=get("FHIR_IMAGES_AUDIT_TOKEN"),
            retention_schedule=get("FHIR_IMAGES_RETENTION_SCHEDULE") or "england",
        )

    def require_hook_secret(self) -> str:
        if not self.hook_secret or len(self.hook_secret) < 16:
            raise InvalidSetting("set FHIR_IMAGES_HOOK_SECRET to a secret of 16 characters or more")
        return self.hook_secret
