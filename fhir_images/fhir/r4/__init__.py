"""FHIR R4 (4.0.1): images as Media, with Consent, Provenance, AuditEvent and Task.

Everything that knows R4's field names is in this package: reading (:mod:`.read`), the
submission of a new image (:mod:`.mapping`, :mod:`.submission`) and the records written later
(:mod:`.records`). :data:`R4` is the version object the rest of the code uses.
"""

from __future__ import annotations

from typing import Any

from .. import common
from .. import version as _version
from ..searches import Searches
from . import mapping, read, records
from .submission import Submission


class _R4(Searches):
    """The R4 implementation of :class:`fhir_images.fhir.version.FhirVersion`."""

    name = "R4"
    release = "4.0"  # the prefix of the fhirVersion it serves
    #: whether an image states its confidentiality in its content too (kept in step by labels)
    declares_confidentiality = False
    image_sort = "-created"
    image_type = "Media"

    image = staticmethod(read.image)
    binary = staticmethod(common.binary)
    consent = staticmethod(read.consent)
    patient = staticmethod(common.patient)
    task = staticmethod(common.task)
    approval = staticmethod(read.approval)

    map_submission = staticmethod(mapping.map_submission)

    @staticmethod
    def submission(bundle: dict[str, Any]) -> Submission:
        return Submission(bundle)

    disclosure_audit = staticmethod(records.disclosure_audit)
    destruction_audit = staticmethod(records.destruction_audit)
    anonymisation_audit = staticmethod(records.anonymisation_audit)
    audit_failed = staticmethod(records.audit_failed)
    anonymised_copy = staticmethod(records.anonymised_copy)
    approval_task = staticmethod(records.approval_task)
    approved = staticmethod(records.approved)
    refused = staticmethod(records.refused)
    used = staticmethod(records.used)
    review_task = staticmethod(records.review_task)
    completed = staticmethod(records.completed)
    subscription = staticmethod(records.subscription)
    subscription_topic = staticmethod(records.subscription_topic)
    topic_url_of = staticmethod(records.topic_url_of)
    topic_search = staticmethod(records.topic_search)
    subscription_target = staticmethod(records.subscription_target)
    subscription_headers = staticmethod(records.subscription_headers)

    @staticmethod
    def declared_labels_patch(
        image: dict[str, Any], labels: list[dict[str, str]]
    ) -> list[dict[str, Any]] | None:
        return None  # a Media states its labels only in meta.security

    notification_focus = staticmethod(records.notification_focus)
    notification_type = staticmethod(records.notification_type)
    consent_change_provenance = staticmethod(records.consent_change_provenance)
    withdrawn = staticmethod(records.withdrawn)
    superseded = staticmethod(records.superseded)
    narrowed = staticmethod(records.narrowed)


R4 = _R4()
_version.register_version("4.0", R4)

__all__ = ["R4", "Submission"]
