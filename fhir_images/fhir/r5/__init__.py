"""FHIR R5 (5.0.0): images as DocumentReference, with R5 Consent and Provenance.

What differs from R4 is here and only here: the mapping of a new image (:mod:`.mapping`), the
reading of images and Consents (:mod:`.read`), consent changes (:mod:`.records`) and the
searches' sort. Binaries, Patients and Tasks read as in R4 (``fhir.common``). :data:`R5` is the
version object.
"""

from __future__ import annotations

from typing import Any

from .. import common
from .. import version as _version
from ..searches import Searches
from . import mapping, read, records
from .submission import Submission


class _R5(Searches):
    """The R5 implementation of :class:`fhir_images.fhir.version.FhirVersion`."""

    name = "R5"
    release = "5.0"  # the prefix of the fhirVersion it serves
    #: whether an image states its confidentiality in its content too (kept in step by labels)
    declares_confidentiality = True
    image_sort = "-date"
    image_type = "DocumentReference"

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
    notification_focus = staticmethod(records.notification_focus)
    notification_type = staticmethod(records.notification_type)
    topic_search = staticmethod(records.topic_search)
    subscription_target = staticmethod(records.subscription_target)
    subscription_headers = staticmethod(records.subscription_headers)
    declared_labels_patch = staticmethod(records.declared_labels_patch)
    consent_change_provenance = staticmethod(records.consent_change_provenance)
    withdrawn = staticmethod(records.withdrawn)
    superseded = staticmethod(records.superseded)
    narrowed = staticmethod(records.narrowed)


R5 = _R5()
_version.register_version("5.0", R5)

__all__ = ["R5", "Submission"]
