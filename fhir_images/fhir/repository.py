"""One repository of the queries fhir-images makes of a server, answering with views.

Every search and read of the project goes through here (and the version module for its
parameters), so there is one definition each of "the images of a patient", "the Consents of an
image", "the labels of a resource" and the like.
"""

from __future__ import annotations

from typing import Any

from .._exceptions import BadResponse, ResourceNotFound, ServerError
from .client import FhirClient
from .common import binary_reference
from .labels import current_labels
from .version import FhirVersion
from .views import ApprovalView, BinaryView, ConsentView, ImageView, PatientView, TaskView


class Repository:
    """Reads (and a few idempotent writes) against one server, in its FHIR version."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client

    @property
    def version(self) -> FhirVersion:
        return self.client.version

    # ------------------------------------------------------------------------ images

    def image(self, ref: str) -> ImageView:
        return self.version.image(self.client.read(ref))

    def images(self, refs: list[str]) -> dict[str, ImageView]:
        """Several images of the server's image type, read in one search (``_id``); those not
        found are left out (a caller reads them one by one, as :meth:`image`)."""
        rtype = self.version.image_type
        ids = sorted({r.split("/", 1)[1] for r in refs if r.startswith(f"{rtype}/")})
        if not ids:
            return {}
        params = {"_id": ",".join(ids), "_count": str(len(ids))}
        found = (self.version.image(r) for r in self.client.search(rtype, params))
        return {image.ref: image for image in found if image.ref in refs}

    def patients(self, refs: list[str]) -> dict[str, PatientView | None]:
        """Several Patients in one search (``_id``): each asked for, None where there is none
        (as :meth:`patient` answers a Patient that is not on the server)."""
        ids = sorted({r.split("/", 1)[1] for r in refs if r.startswith("Patient/")})
        found: dict[str, PatientView | None] = {f"Patient/{i}": None for i in ids}
        if ids:
            params = {"_id": ",".join(ids), "_count": str(len(ids))}
            for raw in self.client.search("Patient", params):
                ref = f"Patient/{raw.get('id')}"
                if ref in found:
                    found[ref] = self.version.patient(raw)
        return found

    def images_of_patient(self, patient: str) -> list[ImageView]:
        rtype, params = self.version.images_of_patient(patient)
        return [self.version.image(r) for r in self.client.search(rtype, params)]

    def image_by_hash(self, sha256: str, patient: str) -> ImageView | None:
        """The image of this patient with these bytes, if the server has it."""
        rtype, params = self.version.image_by_hash(sha256, patient)
        found = next(self.client.search(rtype, params), None)
        return self.version.image(found) if found is not None else None

    def binary_of(self, image: ImageView) -> str | None:
        """The Binary an image's content points at on this server (None: not a Binary here)."""
        return binary_reference(image.content_url, self.client.base_url)

    def binary(self, ref: str) -> BinaryView:
        """A Binary's labels, tags and securityContext, never its bytes."""
        return self.version.binary(self.client.binary_meta(ref))

    def labels(self, ref: str) -> list[dict[str, Any]]:
        """A resource's security labels, as the server's label strategy reads them."""
        return current_labels(self.client, ref)

    # ---------------------------------------------------------------------- consents

    def consents_for_image(self, image: str) -> list[ConsentView]:
        """Every Consent that names the image (any status): the one definition of an image's
        consents."""
        rtype, params = self.version.consents_of_image(image)
        return [self.version.consent(r) for r in self.client.search(rtype, params)]

    def consents_for_images(self, images: list[str]) -> dict[str, list[ConsentView]]:
        """The Consents of each of several images, found by one search (the query of
        :meth:`consents_for_image`, its values OR-ed), each matched to the images it names."""
        found: dict[str, list[ConsentView]] = {ref: [] for ref in images}
        if not images:
            return found
        rtype, params = self.version.consents_of_image(",".join(images))
        for raw in self.client.search(rtype, params):
            consent = self.version.consent(raw)
            for named in consent.images:
                ref = "/".join(named.removeprefix(self.client.base_url).split("/")[:2])
                if ref in found and consent not in found[ref]:
                    found[ref].append(consent)
        return found

    def consent(self, ref: str) -> ConsentView:
        return self.version.consent(self.client.read(ref))

    # ------------------------------------------------------------------------ people

    def patient(self, ref: str) -> PatientView | None:
        if not ref.startswith("Patient/"):
            return None
        try:
            return self.version.patient(self.client.read(ref))
        except ResourceNotFound:
            return None

    def exists(self, ref: str) -> bool:
        try:
            self.client.read(ref)
        except ResourceNotFound:
            return False
        return True

    # ------------------------------------------------------------------------- tasks

    def task(self, ref: str) -> TaskView:
        return self.version.task(self.client.read(ref))

    def tasks_with_identifier(self, identifier: str) -> list[TaskView]:
        return [
            self.version.task(t)
            for t in self.client.search("Task", {"identifier": identifier, "_count": "10"})
        ]

    def tasks_with_identifiers(self, identifiers: list[str]) -> dict[str, list[TaskView]]:
        """The Tasks of each of several identifiers (``system|value``), found by one search
        (the query of :meth:`tasks_with_identifier`, its values OR-ed)."""
        found: dict[str, list[TaskView]] = {i: [] for i in identifiers}
        if not identifiers:
            return found
        params = {"identifier": ",".join(identifiers), "_count": str(10 * len(identifiers))}
        for raw in self.client.search("Task", params):
            task = self.version.task(raw)
            for ident in raw.get("identifier") or []:
                if not isinstance(ident, dict):
                    continue
                key = f"{ident.get('system')}|{ident.get('value')}"
                if key in found and task not in found[key]:
                    found[key].append(task)
        return found

    def approvals(
        self, *, image: str | None = None, patient: str | None = None, status: str
    ) -> list[ApprovalView]:
        rtype, params = self.version.approvals(image=image, patient=patient, status=status)
        found = (self.version.approval(t) for t in self.client.search(rtype, params))
        return [a for a in found if a is not None]

    def approval(self, ref: str) -> tuple[ApprovalView | None, TaskView]:
        raw = self.client.read(ref)
        return self.version.approval(raw), self.version.task(raw)

    # ------------------------------------------------------------------ what refers to it

    def provenances_of(self, target: str) -> list[str]:
        rtype, params = self.version.provenances_of(target)
        return [f"Provenance/{p['id']}" for p in self.client.search(rtype, params)]

    def tasks_about(self, image: str) -> list[str]:
        rtype, params = self.version.tasks_about(image)
        return [f"Task/{t['id']}" for t in self.client.search(rtype, params)]

    # ----------------------------------------------------------------- idempotent writes

    def create_once(self, resource: dict[str, Any], if_none_exist: str) -> str:
        """Create a resource unless one matching ``if_none_exist`` exists; its reference either
        way. A conditional create inside a transaction, so a repeat after a lost reply creates
        nothing twice."""
        return self.create_many([(resource, if_none_exist)])[0]

    def create_many(self, resources: list[tuple[dict[str, Any], str]]) -> list[str]:
        """:meth:`create_once` for several resources, in one transaction (all or none)."""
        response = self.client.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": resource,
                        "request": {
                            "method": "POST",
                            "url": resource["resourceType"],
                            "ifNoneExist": if_none_exist,
                        },
                    }
                    for resource, if_none_exist in resources
                ],
            }
        )
        entries = response.get("entry") or []
        if len(entries) != len(resources):
            raise BadResponse("the transaction answer has not one entry for each resource")
        return [
            "/".join(str((e.get("response") or {}).get("location", "")).split("/")[:2])
            for e in entries
        ]

    def update(self, resource: dict[str, Any], version_id: str | None) -> dict[str, Any]:
        """Write a changed resource back, failing with VersionConflict if it changed since."""
        return self.client.update(resource, if_match=version_id)

    def record_consent_change(
        self, consent: ConsentView, *, by: str | None, reason: str, activity: str
    ) -> str:
        """A Provenance for one change of one Consent (its version), written once however
        often it is retried; its reference."""
        from .. import _codes as c

        cid = consent.ref.split("/", 1)[1]
        record = f"consent-change.{cid}.{consent.version_id or '1'}"
        provenance = self.version.consent_change_provenance(
            consent, by=by, reason=reason, activity=activity, record=record
        )
        return self.create_once(provenance, f"_tag={c.SID_RECORD}|{record}")

    def try_consents_for_image(self, image: str) -> tuple[list[ConsentView], str | None]:
        """The image's Consents, or the error class that stopped reading them."""
        try:
            return self.consents_for_image(image), None
        except ServerError as exc:
            return [], type(exc).__name__
