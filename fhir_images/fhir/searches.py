"""The searches fhir-images makes, the same in R4 and R5 but for the image's resource type and
the element its newest-first order is by (a version module sets both)."""

from __future__ import annotations

from .. import _codes as c
from .records_common import APPROVAL_CODE

Search = tuple[str, dict[str, str]]


class Searches:
    image_type = ""
    image_sort = ""  # the search parameter that orders a patient's images, newest first

    def images_of_patient(self, patient: str) -> Search:
        return self.image_type, {"subject": patient, "_count": "100", "_sort": self.image_sort}

    def image_by_hash(self, sha256: str, patient: str) -> Search:
        return self.image_type, {
            "identifier": f"{c.SID_SHA256}|{sha256}",
            "subject": patient,
            "_count": "1",
            "_total": "none",  # found or not; a server that counts by default (HAPI) need not
        }

    def consents_of_image(self, image: str) -> Search:
        # every one is read, never counted: a server that counts by default (HAPI) need not
        return "Consent", {"data": image, "_count": "100", "_total": "none"}

    def provenances_of(self, target: str) -> Search:
        return "Provenance", {"target": target, "_count": "100"}

    def tasks_about(self, image: str) -> Search:
        return "Task", {"focus": image, "_count": "100"}

    def approvals(self, *, image: str | None, patient: str | None, status: str) -> Search:
        code = APPROVAL_CODE
        params = {"code": f"{code['system']}|{code['code']}", "status": status, "_count": "100"}
        if image:
            params["focus"] = image
        if patient:
            params["subject"] = patient
        return "Task", params
