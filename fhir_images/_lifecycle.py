"""After an image is in the record: disclosure, consent changes, destruction, anonymised copies.

These read and write the FHIR server through the FHIR layer; the decisions are the policy
engine's (:mod:`fhir_images.policy`). Every disclosure, destruction and anonymised copy leaves
an AuditEvent on the server, following IHE BALP's patterns; it is written *before* anything
goes out, so nothing leaves unaudited.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import Field

from . import _codes as c
from ._approvals import approvals_for, request_approval, use_approval_entry
from ._exceptions import (
    ActionRefused,
    BadResponse,
    FhirImagesError,
    ResourceNotFound,
    ServerError,
)
from ._result import Result
from .fhir import FhirClient, ImageView, Repository, label_image
from .fhir.audit import AuditTrail, audit_trail
from .fhir.common import created, is_reference, iso
from .fhir.views import BinaryView, ConsentView
from .policy import (
    DisclosureDecision,
    DisclosureRequest,
    ImageRecord,
    Policy,
    RetentionSchedule,
    Verdict,
    check_anonymisation,
    check_destruction,
    decide_disclosure,
    decide_one,
    get_policy,
    high_water_mark,
    releasable_labels,
)

log = logging.getLogger("fhir_images.lifecycle")

_OBLIGATIONS = {
    "NORDSCLCDS",
    "NOREUSE",
    "CPLYCD",
    "MINEC",
    "PERSISTLABEL",
    "DELAU",
    "NOCOLLECT",
    "NORELINK",
    "NOPAT",
    "HUAPRV",
}


def _write_private(path: Path, data: bytes) -> None:
    """Write a file that holds patient data: owner-only whatever the folder, replaced whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _private_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)


# -------------------------------------------------------------------------------- reading


def _record(
    records: Repository,
    image: ImageView,
    consents_found: tuple[list[ConsentView], str | None] | None = None,
    binaries_found: Mapping[str, BinaryView] | None = None,
) -> ImageRecord:
    """One image as the disclosure rules see it; ``consents_found`` when its Consents (or the
    error that stopped reading them) are already known, ``binaries_found`` Binaries already
    read (by reference; one not there is read now)."""
    consents, consent_error = consents_found or records.try_consents_for_image(image.ref)
    binary, binary_error = None, None
    binary_ref = records.binary_of(image)
    if binary_ref is not None:
        try:
            binary = (binaries_found or {}).get(binary_ref) or records.binary(binary_ref)
        except ResourceNotFound:
            binary_error = "the Binary is not on the server"
        except ServerError as exc:
            binary_error = f"the Binary could not be read ({type(exc).__name__})"
    elif image.content_url:
        binary_error = "the image's content is not a Binary on this server"
    return ImageRecord(image, tuple(consents), consent_error, binary, binary_error)


def read_record(client: FhirClient, media_ref: str) -> ImageRecord:
    """One image as the disclosure rules see it: the image, its Binary's labels and
    securityContext (not its bytes), and its Consents."""
    records = Repository(client)
    return _record(records, records.image(media_ref))


def patient_records(client: FhirClient, patient: str) -> list[ImageRecord]:
    """Every image of a patient, each with its Binary's labels and the Consents that name it."""
    records = Repository(client)
    return [_record(records, image) for image in records.images_of_patient(patient)]


# ------------------------------------------------------------------------------ disclosure


class DisclosureResult(Result):
    """What a disclosure decided and did: a decision per image, the rows of what was withheld
    (with the approval requested, if any), the audits, and where the release went: into files
    (``bundle_file``, ``withheld_file``), to a stream the caller gave, or here (``release``)."""

    patient: str
    purpose: str
    decisions: list[DisclosureDecision]
    withheld: list[dict[str, Any]] = Field(default_factory=list)
    audit_events: list[str] = Field(default_factory=list)
    approval_requests: dict[str, str] = Field(default_factory=dict)
    release: dict[str, Any] | None = None
    bundle_file: Path | None = None
    withheld_file: Path | None = None

    @property
    def released(self) -> list[DisclosureDecision]:
        return [d for d in self.decisions if d.verdict is Verdict.RELEASE]


def _check_parties(records: Repository, req: DisclosureRequest) -> None:
    """The requester and recipient must exist on the server before anything is written."""
    for role, ref in (("requester", req.requester), ("recipient", req.recipient)):
        if ref is not None and not records.exists(ref):
            raise ActionRefused(f"the {role} is not on the server: record them first")


def disclosure_audit(
    record: ImageRecord,
    req: DisclosureRequest,
    patient: str,
    *,
    client: FhirClient | None = None,
    now: datetime | None = None,
    approver: str | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """The AuditEvent of one released image (IHE BALP privacy disclosure at the source),
    checked against the FHIR models unless ``validate`` is False (for the many events of one
    release whose first was checked: the same builder, other images)."""
    from .fhir.r4 import R4

    version = client.version if client is not None else R4
    build = version.disclosure_audit
    if not validate:
        build = getattr(build, "__wrapped__", build)
    return build(
        record.image,
        releasable_labels(record) if record.binary is not None else record.image.labels,
        record.confidentiality,
        purpose=req.purpose,
        requester=req.requester,
        receiver=req.receiver,
        patient=patient,
        approver=approver,
        now=now,
    )


def disclose(
    client: FhirClient,
    patient: str,
    req: DisclosureRequest,
    out_dir: Path | None = None,
    *,
    sink: IO[bytes] | None = None,
    policy: str | Policy = "default",
    now: datetime | None = None,
    audit: AuditTrail | None = None,
) -> DisclosureResult:
    """Decide, audit, then release: the release Bundle goes to ``out_dir``
    (``release-bundle.json`` and ``withheld.json``, both 0600), or is written to ``sink`` (a
    binary stream: an HTTP response, a socket), or, with neither, is returned in the result.

    The requester and recipient must be on the server before anything happens. An image that
    needs approval is released only against an approval on the server
    (:mod:`fhir_images._approvals`); without one, an approval is requested and the image
    waits. Every released image is audited (naming the approver where there is one) before
    anything goes out.

    The release Bundle (type collection) carries the high-water mark and only handling
    obligations (no sensitivity codes, which would reveal private facts); each released image
    is followed by its Binary with the bytes, both with the highest labels of the two. The
    bytes are checked against the image's SHA-256 as they stream: a mismatch stops the release
    (and is recorded in the audit trail).
    """
    if not is_reference(patient) or not patient.startswith("Patient/"):
        raise ActionRefused("the patient is named by a reference, like Patient/123")
    if out_dir is not None and sink is not None:
        raise ActionRefused("give the release one destination: a folder or a stream")
    get_policy(policy)  # the disclosure rules are shared by every pack here
    client.capabilities()
    trail = audit or audit_trail(client)
    records = Repository(client)
    _check_parties(records, req)
    at = now or datetime.now(UTC)
    found = [_record(records, image) for image in records.images_of_patient(patient)]
    decisions = decide_disclosure(found, req, now=at)
    for i, (record, decision) in enumerate(zip(found, decisions, strict=True)):
        if decision.verdict is Verdict.APPROVE:
            found[i] = replace(record, approvals=approvals_for(client, record.ref))
            decisions[i] = decide_one(found[i], req, now=at)
    by_ref = {r.ref: r for r in found}
    released = [(by_ref[d.media], d) for d in decisions if d.verdict is Verdict.RELEASE]

    requests_made: dict[str, str] = {}
    for d in decisions:
        if d.verdict is Verdict.APPROVE:
            requests_made[d.media] = request_approval(
                client, by_ref[d.media], req, patient, d.reasons, now=at
            )
    withheld = []
    for d in decisions:
        if d.verdict is not Verdict.RELEASE:
            row = d.as_dict()
            row["approval_request"] = requests_made.get(d.media)
            withheld.append(row)

    audits: list[str] = []
    events: list[dict[str, Any]] = []
    if released:
        audits, events = _audit_release(client, trail, released, req, patient)
    result = DisclosureResult(
        patient=patient,
        purpose=req.purpose,
        decisions=decisions,
        withheld=withheld,
        audit_events=audits,
        approval_requests=requests_made,
    )
    chunks = _release_chunks(client, records, [r for r, _ in released], high_water_mark(decisions))
    try:
        if out_dir is not None:
            _private_dir(out_dir)
            result.bundle_file = out_dir / "release-bundle.json"
            _write_chunks(result.bundle_file, chunks)
            result.withheld_file = out_dir / "withheld.json"
            _write_private(
                result.withheld_file,
                json.dumps(
                    {"patient": patient, "purpose": req.purpose, "images": withheld}, indent=2
                ).encode(),
            )
        elif sink is not None:
            for chunk in chunks:
                sink.write(chunk)
        else:
            result.release = json.loads(b"".join(chunks))
    except FhirImagesError:
        if events and not trail.atomic:
            _record_failure(client, trail, events, "the release was not completed")
        raise
    return result


def _audit_release(
    client: FhirClient,
    trail: AuditTrail,
    released: list[tuple[ImageRecord, DisclosureDecision]],
    req: DisclosureRequest,
    patient: str,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Audit every released image and mark each approval used: in one transaction on a server
    that takes AuditEvents; else audits first (all or none), then the approvals, and a record
    of the failure if that second step fails. Returns the audits' references and the events."""
    events = [
        disclosure_audit(
            record,
            req,
            patient,
            client=client,
            approver=decision.approval.approver if decision.approval else None,
        )
        for record, decision in released
    ]
    approvals = [decision.approval for _, decision in released]
    if trail.atomic:
        entries: list[dict[str, Any]] = []
        for event, approval in zip(events, approvals, strict=True):
            audit_url = f"urn:uuid:{uuid.uuid4()}"
            entries.append(
                {
                    "fullUrl": audit_url,
                    "resource": event,
                    "request": {"method": "POST", "url": "AuditEvent"},
                }
            )
            if approval is not None:
                entries.append(use_approval_entry(client, approval, audit_url))
        response = client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries},
            idempotent=False,
        )
        return created(response, "AuditEvent"), events
    refs = trail.record(events)
    uses = [
        use_approval_entry(client, approval, ref)
        for approval, ref in zip(approvals, refs, strict=True)
        if approval is not None
    ]
    if uses:
        try:
            client.transaction(
                {"resourceType": "Bundle", "type": "transaction", "entry": uses},
                idempotent=False,
            )
        except FhirImagesError:
            _record_failure(
                client,
                trail,
                events,
                "the release was not made: an approval could not be marked used",
            )
            raise
    return refs, events


def _record_failure(
    client: FhirClient, trail: AuditTrail, events: list[dict[str, Any]], why: str
) -> None:
    """After an audited act failed: say so in the trail (best effort; the act did not happen)."""
    try:
        trail.record([client.version.audit_failed(e, why) for e in events])
    except FhirImagesError as exc:
        log.error("could not record that an audited act failed (%s)", type(exc).__name__)


def _release_chunks(
    client: FhirClient, records: Repository, released: list[ImageRecord], hwm: str
) -> Iterator[bytes]:
    """The release Bundle as JSON, piece by piece: each image's bytes are streamed from the
    server, base64-encoded as they come, and checked against the image's SHA-256."""
    caveats = {
        (s, code)
        for r in released
        for s, code in releasable_labels(r)
        if s == c.V3_ACT_CODE and code in _OBLIGATIONS
    }
    meta = {
        "security": [
            {"system": c.V3_CONFIDENTIALITY, "code": hwm},
            *({"system": s, "code": code} for s, code in sorted(caveats)),
        ]
    }
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": iso(datetime.now(UTC)),
        "meta": meta,
    }
    yield (json.dumps(head)[:-1] + ', "entry": [').encode()
    first = True
    for r in released:
        image = json.loads(json.dumps(r.image.raw))
        labels = {"security": releasable_labels(r).codings()}
        image["meta"] = labels
        yield (
            ("" if first else ",")
            + json.dumps({"fullUrl": f"{client.base_url}{r.ref}", "resource": image})
        ).encode()
        first = False
        binary = records.binary_of(r.image)
        if binary is None:
            continue
        ctype = r.image.content_type or "application/octet-stream"
        yield (
            ',{"fullUrl": '
            + json.dumps(f"{client.base_url}{binary}")
            + ', "resource": {"resourceType": "Binary", "id": '
            + json.dumps(binary.split("/", 1)[1])
            + ', "contentType": '
            + json.dumps(ctype)
            + ', "securityContext": '
            + json.dumps({"reference": r.ref})
            + ', "meta": '
            + json.dumps(labels)
            + ', "data": "'
        ).encode()
        digest = hashlib.sha256()
        pending = b""
        for chunk in client.iter_binary(binary, ctype):
            digest.update(chunk)
            pending += chunk
            cut = len(pending) - len(pending) % 3  # no base64 padding mid-way
            yield base64.b64encode(pending[:cut])
            pending = pending[cut:]
        if r.image.sha256 and digest.hexdigest() != r.image.sha256:
            raise BadResponse(
                f"the bytes of {binary} are not the image's (SHA-256 differs): release stopped"
            )
        yield base64.b64encode(pending) + b'"}}'
    yield b"]}"


def _write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """Write to a private temporary file, then put it in place: never half a release."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


# ------------------------------------------------------------------------- consent changes

_PERMISSION_PURPOSE = {
    "second_opinion": c.COC,
    "teaching": c.TRAIN,
    "research": c.HRESCH,
    "care": c.TREAT,
}
#: The permissions a consent can be narrowed by (care use ends by withdrawing it).
NARROWABLE = ("second_opinion", "teaching", "research")


class ConsentChange(Result):
    """What a consent change did: the Consents changed, the Provenance recording each change,
    the images whose labels were raised, and the Consents that needed no change (already
    inactive, already denying)."""

    changed: list[str] = Field(default_factory=list)
    provenance: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)

    @property
    def nothing_changed(self) -> bool:
        return not self.changed


def _images_named(records: Repository, ref: str) -> list[str]:
    if not is_reference(ref) or not ref.startswith(("Consent/", records.version.image_type + "/")):
        raise ActionRefused("name a Consent (Consent/123) or an image (Media/123)")
    if not ref.startswith("Consent/"):
        records.image(ref)  # it must exist
        return [ref]
    images = list(records.consent(ref).images)
    if not images:
        raise ActionRefused(f"{ref} names no image")
    return images


def withdraw_consent(client: FhirClient, ref: str, *, by: str, reason: str) -> ConsentChange:
    """The patient withdraws their consent for an image (named directly, or by one of its
    Consents): *every* active Consent of that image becomes inactive, its provision period
    ends now (If-Match), each change is recorded in a Provenance, and the image and its
    bytes gain NOREUSE and NORDSCLCDS. Withdrawing what is already inactive changes nothing."""
    if not by.strip() or not reason.strip():
        raise ActionRefused("withdrawing consent needs who (by) and why (reason)")
    records = Repository(client)
    result = ConsentChange()
    for media in _images_named(records, ref):
        for consent in records.consents_for_image(media):
            if not consent.active:
                result.unchanged.append(consent.ref)
                continue
            updated = records.update(
                records.version.withdrawn(consent, datetime.now(UTC)), consent.version_id
            )
            recorded = records.record_consent_change(
                records.version.consent(updated), by=by, reason=reason, activity="withdrawn"
            )
            result.provenance.append(recorded)
            result.changed.append(consent.ref)
        if result.changed:
            label_image(client, media, [c.NOREUSE.as_coding(), c.NORDSCLCDS.as_coding()])
            result.images.append(media)
    return result


def narrow_consent(
    client: FhirClient, ref: str, *, deny: Iterable[str], by: str, reason: str
) -> ConsentChange:
    """Turn permissions (second_opinion, teaching, research) into explicit denies in every
    active Consent of the image (If-Match); a Consent that already denies them is unchanged."""
    if not by.strip() or not reason.strip():
        raise ActionRefused("narrowing consent needs who (by) and why (reason)")
    purposes = set()
    for name in deny:
        if name not in NARROWABLE:
            raise ActionRefused(
                f"cannot narrow {name!r}: choose second_opinion, teaching or "
                "research (to stop care use, withdraw the consent)"
            )
        purposes.add(_PERMISSION_PURPOSE[name])
    records = Repository(client)
    result = ConsentChange()
    for media in _images_named(records, ref):
        for consent in records.consents_for_image(media):
            changed = (
                records.version.narrowed(consent, sorted(purposes)) if consent.active else None
            )
            if changed is None:
                result.unchanged.append(consent.ref)
                continue
            updated = records.update(changed, consent.version_id)
            recorded = records.record_consent_change(
                records.version.consent(updated),
                by=by,
                reason=reason,
                activity="narrowed: " + ", ".join(sorted(purposes)),
            )
            result.provenance.append(recorded)
            result.changed.append(consent.ref)
        if result.changed and c.COC in purposes:
            label_image(client, media, [c.NORDSCLCDS.as_coding()])
            result.images.append(media)
    return result


# ----------------------------------------------------------------------------- destruction


class DestructionResult(Result):
    """The image destroyed, everything deleted with it, and the audit of it."""

    media: str
    deleted: list[str]
    audit_event: str


def destroy(
    client: FhirClient,
    media_ref: str,
    *,
    by: str,
    reason: str,
    record_type: str = "hospital",
    schedule: RetentionSchedule | None = None,
    last_treatment: date | None = None,
    today: date | None = None,
    audit: AuditTrail | None = None,
    summary_in_record: str | None = None,
) -> DestructionResult:
    """Delete an image, its Binary, its Consents, their Provenance and its Tasks together, with
    an AuditEvent, once the retention schedule allows it and no legal hold is on it (G13).

    ``summary_in_record`` (where the record holds the recording's content or an accurate
    summary): an original audio or video recording may go before the period ends where the
    schedule provides for it (W6); the AuditEvent records that as the reason it was allowed."""
    if not by.strip() or not reason.strip():
        raise ActionRefused("destroying an image needs who (by) and why (reason)")
    trail = audit or audit_trail(client)
    records = Repository(client)
    image = records.image(media_ref)
    why = check_destruction(
        image,
        records.patient(image.subject) if image.subject else None,
        schedule=schedule or RetentionSchedule.load(),
        record_type=record_type,
        last_treatment=last_treatment,
        today=today or datetime.now(UTC).date(),
        summary_in_record=summary_in_record,
    )
    consents = records.consents_for_image(media_ref)
    shared = [x for x in consents if set(x.images) - {media_ref}]
    if shared:
        raise ActionRefused(
            "a Consent also covers other images ("
            + ", ".join(x.ref for x in shared)
            + "); change it first"
        )
    doomed = [media_ref]
    binary = records.binary_of(image)
    if binary is not None:
        if records.binary(binary).security_context != media_ref:
            raise ActionRefused(
                f"{binary} does not name {media_ref} as its securityContext: the bytes may "
                "belong to another image, so nothing is destroyed; resolve it by hand"
            )
        doomed.append(binary)
    doomed += [x.ref for x in consents]
    provenances = {
        p
        for target in [media_ref, *(x.ref for x in consents)]
        for p in records.provenances_of(target)
    }
    doomed += sorted(provenances)
    doomed += records.tasks_about(media_ref)
    event = records.version.destruction_audit(
        image, by=by, reason=reason, retention=why, destroyed_with=doomed[1:]
    )
    entries: list[dict[str, Any]] = [
        {"request": {"method": "DELETE", "url": ref}} for ref in reversed(doomed)
    ]
    recorded = ""
    if trail.atomic:
        entries.append({"resource": event, "request": {"method": "POST", "url": "AuditEvent"}})
    else:
        recorded = trail.record([event])[0]  # before anything is deleted
    try:
        response = client.transaction(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}, idempotent=False
        )
    except ServerError as exc:
        if not trail.atomic:
            _record_failure(client, trail, [event], "the image was not destroyed")
        if exc.status == 409:
            raise ActionRefused(f"other resources still reference {media_ref}") from exc
        raise
    if trail.atomic:
        audits = created(response, "AuditEvent")
        recorded = audits[-1] if audits else ""
    return DestructionResult(media=media_ref, deleted=doomed, audit_event=recorded)


# --------------------------------------------------------------------------- anonymisation


class AnonymisedCopy(Result):
    """The anonymised picture (PNG) and its Media (JSON), both files private to the user."""

    image: Path
    media: Path


def anonymise(
    client: FhirClient,
    media_ref: str,
    out_dir: Path,
    *,
    purpose: str = "TRAIN",
    by: str,
    audit: AuditTrail | None = None,
) -> AnonymisedCopy:
    """An anonymised copy for teaching or research, if every active Consent permits it (G2).

    All metadata goes (EXIF, ICC, XMP, text; the orientation is applied to the pixels), no
    patient reference, no identifiers, dates or free text. The picture itself may still
    identify the patient (a face, a tattoo): the copy is labelled for human approval before
    use. It is a secondary use, so it is audited before anything is written out.
    """
    trail = audit or audit_trail(client)
    record = read_record(client, media_ref)
    check_anonymisation(record, purpose)
    from PIL import Image

    from ._intake import Limits, decode_for_copy

    limits = Limits()
    raw = bytearray()
    binary = Repository(client).binary_of(record.image)
    assert binary is not None  # check_anonymisation saw it
    for chunk in client.iter_binary(binary, record.image.content_type or "image/jpeg"):
        raw += chunk
        if len(raw) > limits.max_image_bytes:
            raise ActionRefused(f"{binary} is larger than an image may be; no copy is made")
    upright = decode_for_copy(bytes(raw), limits)
    pixels = Image.frombytes("RGB", upright.size, upright.tobytes())  # nothing but pixels
    buf = io.BytesIO()
    pixels.save(buf, "PNG")
    data = buf.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    name = sha256[:16]
    image_path = out_dir / f"anonymised-{name}.png"
    copy = client.version.anonymised_copy(
        record.image,
        purpose=purpose,
        file_name=image_path.name,
        size=len(data),
        sha1_b64=base64.b64encode(hashlib.sha1(data).digest()).decode(),
    )
    # a secondary use: audited before anything is written out, or nothing is
    trail.record(
        [
            client.version.anonymisation_audit(
                record.image, record.confidentiality, purpose=purpose, by=by, copy_sha256=sha256
            )
        ]
    )
    _private_dir(out_dir)
    _write_private(image_path, data)
    media_path = out_dir / f"anonymised-{name}.json"
    _write_private(media_path, json.dumps(copy, indent=2).encode())
    return AnonymisedCopy(image=image_path, media=media_path)
