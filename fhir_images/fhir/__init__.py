"""The FHIR layer: everything that knows FHIR.

* :mod:`.client`: the REST client (HTTP, retries, typed errors);
* :mod:`.servers`: server behaviour as strategy objects (labels, Binary upload and read);
* :mod:`.version` and :mod:`.r4`: the version seam and FHIR R4;
* :mod:`.views`: typed read views, the same for every version;
* :mod:`.repository`: the queries fhir-images makes, answering with views;
* :mod:`.labels`: the one way labels change on a server;
* :mod:`.keys`: deterministic record keys.

Nothing outside this package reads or writes FHIR field names.

Its ``__all__`` is the extension API: what a new server profile or FHIR version is built from,
and the views a policy reads. The integrator API is :mod:`fhir_images`.
"""

from __future__ import annotations

from .client import FhirClient, RetryPolicy, WrittenBinary
from .labels import apply_labels, label_image, plan_label_change
from .repository import Repository
from .servers import PROFILES, BinaryRead, BinaryWrite, LabelUpdate, ServerProfile, register_server
from .subscriptions import SubscriptionStyle
from .version import FhirVersion, get_version, register_version
from .views import (
    ApprovalView,
    BinaryView,
    ConsentView,
    ImageView,
    Labels,
    PatientView,
    TaskView,
)

__all__ = [
    "PROFILES",
    "ApprovalView",
    "BinaryRead",
    "BinaryView",
    "BinaryWrite",
    "ConsentView",
    "FhirClient",
    "FhirVersion",
    "ImageView",
    "LabelUpdate",
    "Labels",
    "PatientView",
    "Repository",
    "RetryPolicy",
    "ServerProfile",
    "SubscriptionStyle",
    "TaskView",
    "WrittenBinary",
    "apply_labels",
    "get_version",
    "label_image",
    "plan_label_change",
    "register_server",
    "register_version",
]
