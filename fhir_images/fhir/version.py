"""The version seam: everything that differs between FHIR versions sits behind one interface.

A FHIR version is an object with the members of :class:`FhirVersion` (see
:mod:`fhir_images.fhir.r4`): views from the resources the server sends, the searches
fhir-images makes, and the resources it writes. Adding a version is one new module that
provides them, registered with :func:`register_version`; nothing outside the FHIR layer changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from .._codes import Confidentiality
from .._exceptions import IncompatibleServer
from .views import (
    ApprovalView,
    BinaryView,
    ConsentView,
    ImageView,
    Labels,
    PatientView,
    TaskView,
)

Resource = dict[str, Any]
Search = tuple[str, dict[str, str]]


class Stored(Protocol):
    @property
    def refs(self) -> dict[str, str]: ...
    @property
    def created(self) -> tuple[str, ...]: ...

    @property
    def image(self) -> str: ...
    @property
    def binary(self) -> str | None: ...
    @property
    def consent(self) -> str | None: ...


class Submission(Protocol):
    """A stored submission (an outbox entry's transaction) as delivery adjusts and sends it."""

    @property
    def wanted_labels(self) -> Labels: ...
    @property
    def has_consent(self) -> bool: ...
    @property
    def consent_date(self) -> datetime | None: ...
    @property
    def consent_record(self) -> str | None: ...
    def reuse_binary(self, binary_ref: str) -> None: ...
    def consent_inactive(self) -> None: ...
    def json(self) -> Resource: ...
    def streamed(self, content: Path) -> Iterable[bytes]: ...
    def stored(self, response: Resource) -> Stored: ...


class FhirVersion(Protocol):
    """What a FHIR version module provides (R4: :mod:`fhir_images.fhir.r4`)."""

    @property
    def name(self) -> str: ...
    @property
    def release(self) -> str: ...
    @property
    def image_type(self) -> str: ...
    @property
    def declares_confidentiality(self) -> bool: ...

    def map_submission(self, *args: Any, **kwargs: Any) -> Any: ...
    def submission(self, bundle: Resource) -> Submission: ...

    # reading
    def image(self, resource: Resource) -> ImageView: ...
    def binary(self, resource: Resource) -> BinaryView: ...
    def consent(self, resource: Resource) -> ConsentView: ...
    def patient(self, resource: Resource) -> PatientView: ...
    def task(self, resource: Resource) -> TaskView: ...
    def approval(self, resource: Resource) -> ApprovalView | None: ...

    # searching
    def images_of_patient(self, patient: str) -> Search: ...
    def image_by_hash(self, sha256: str, patient: str) -> Search: ...
    def consents_of_image(self, image: str) -> Search: ...
    def provenances_of(self, target: str) -> Search: ...
    def tasks_about(self, image: str) -> Search: ...
    def approvals(self, *, image: str | None, patient: str | None, status: str) -> Search: ...

    # writing
    def disclosure_audit(
        self,
        image: ImageView,
        labels: Labels,
        confidentiality: Confidentiality,
        *,
        purpose: str,
        requester: str,
        receiver: str,
        patient: str,
        approver: str | None = None,
        now: datetime | None = None,
    ) -> Resource: ...
    def destruction_audit(
        self,
        image: ImageView,
        *,
        by: str,
        reason: str,
        retention: str,
        destroyed_with: list[str],
        now: datetime | None = None,
    ) -> Resource: ...
    def anonymisation_audit(
        self,
        image: ImageView,
        confidentiality: Confidentiality,
        *,
        purpose: str,
        by: str,
        copy_sha256: str,
        now: datetime | None = None,
    ) -> Resource: ...
    def anonymised_copy(
        self, image: ImageView, *, purpose: str, file_name: str, size: int, sha1_b64: str
    ) -> Resource: ...
    def approval_task(
        self,
        image_ref: str,
        confidentiality: Confidentiality,
        *,
        key: str,
        patient: str,
        purpose: str,
        requester: str,
        receiver: str,
        reasons: Iterable[str],
        now: datetime | None = None,
    ) -> Resource: ...
    def approved(self, task: TaskView, *, by: str, valid_days: int, at: datetime) -> Resource: ...
    def refused(self, task: TaskView, *, by: str, reason: str, at: datetime) -> Resource: ...
    def used(self, task: TaskView, audit_url: str) -> Resource: ...
    def audit_failed(
        self, audit: Resource, description: str, now: datetime | None = None
    ) -> Resource: ...
    def review_task(
        self,
        image: ImageView,
        confidentiality: Confidentiality,
        description: str,
        now: datetime | None,
    ) -> Resource: ...
    def completed(self, task: TaskView) -> Resource: ...
    def subscription(
        self,
        criteria: str,
        endpoint: str,
        header: str,
        *,
        reason: str,
        topic: bool = False,
        sid: str | None = None,
    ) -> Resource: ...
    def subscription_topic(
        self, url: str, resource_types: Iterable[str], title: str
    ) -> Resource: ...
    def topic_url_of(self, topic: Resource) -> str | None: ...
    def topic_search(self, url: str) -> Search: ...
    def subscription_target(self, subscription: Resource) -> str | None: ...
    def declared_labels_patch(
        self, image: Resource, labels: list[dict[str, str]]
    ) -> list[dict[str, Any]] | None: ...
    def subscription_headers(self, subscription: Resource) -> list[str]: ...
    def notification_focus(self, bundle: Resource) -> list[str]: ...
    def notification_type(self, bundle: Resource) -> str | None: ...
    def consent_change_provenance(
        self, consent: ConsentView, *, by: str | None, reason: str, activity: str, record: str
    ) -> Resource: ...
    def withdrawn(self, consent: ConsentView, at: datetime) -> Resource: ...
    def superseded(self, consent: ConsentView) -> Resource: ...
    def narrowed(self, consent: ConsentView, purposes: Iterable[str]) -> Resource | None: ...


_VERSIONS: dict[str, FhirVersion] = {}

#: The versions that come with fhir-images: each module registers itself when imported.
_BUILT_IN = ("fhir_images.fhir.r4", "fhir_images.fhir.r5")


def _built_ins() -> dict[str, FhirVersion]:
    for module in _BUILT_IN:
        importlib.import_module(module)
    return _VERSIONS


def register_version(fhir_version: str, version: FhirVersion) -> None:
    """Make a FHIR version module available for servers that speak ``fhir_version`` (a prefix of
    the CapabilityStatement's fhirVersion, e.g. ``4.0``)."""
    _VERSIONS[fhir_version] = version


def get_version(fhir_version: str) -> FhirVersion:
    """The module for a server's fhirVersion; IncompatibleServer when there is none."""
    for prefix, version in list(_built_ins().items()):
        if fhir_version.startswith(prefix + ".") or fhir_version == prefix:
            return version
    raise IncompatibleServer(
        f"the server speaks FHIR {fhir_version or 'of unknown version'}; fhir-images speaks "
        + ", ".join(f"{p}.x" for p in sorted(_VERSIONS))
    )


def supported_versions() -> list[str]:
    return sorted(_built_ins())
