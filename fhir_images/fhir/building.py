"""Pieces every FHIR version's mapping builds the same way: the meta of a new resource, a
CodeableConcept from a context code, identifiers, a conditional-create transaction entry, and
the transaction of one image itself (:func:`assemble`), from a version's resource builders."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import _codes as c
from .._context import Maker
from ..policy import Outcome
from . import ds4p, parental
from .common import iso
from .keys import binary_id, consent_key, image_key, record_key


def new_meta(
    labels: list[c.Label], submission_id: str, record: str | None = None
) -> dict[str, Any]:
    """Security labels, the submission tag, and the record key tag (when there is one)."""
    tags = [{"system": c.SID_SUBMISSION, "code": submission_id}]
    if record is not None:
        tags.insert(0, {"system": c.SID_RECORD, "code": record})
    return {"security": [label.as_coding() for label in labels], "tag": tags}


def profile_url(name: str) -> str:
    """The canonical URL of one of fhir-images' profiles."""
    return f"{c.CANONICAL_BASE}/StructureDefinition/{name}"


def claim(
    resource: Any,
    profile: str,
    *,
    justification: str | None = None,
    documentation: str | None = None,
    target: Callable[[str], dict[str, Any]] = ds4p.r4_target,
) -> Any:
    """``resource`` (a fhir.resources model with a meta) claiming conformance to the named
    profile in ``meta.profile`` (so that a validator checks it against that profile unasked),
    its labels carrying their DS4P metadata (:func:`ds4p.annotate`)."""
    meta = resource.meta
    meta.profile = [profile_url(profile)]
    if meta.security:
        coding = type(meta.security[0])
        codings = [x.model_dump(mode="json", exclude_none=True) for x in meta.security]
        meta.security = [
            coding.model_validate(x)
            for x in ds4p.annotate(
                codings, justification=justification, documentation=documentation, target=target
            )
        ]
    return resource


def concept(coded: Any) -> dict[str, Any]:
    """A CodeableConcept from a context code (system, code, display)."""
    coding = {
        k: v
        for k, v in (("system", coded.system), ("code", coded.code), ("display", coded.display))
        if v
    }
    out: dict[str, Any] = {}
    if coded.code:
        out["coding"] = [coding]
    if coded.display:
        out["text"] = coded.display
    return out


def identifiers(submission_id: str, record: str | None) -> list[dict[str, str]]:
    ids = [{"system": c.SID_SUBMISSION, "value": submission_id}]
    if record is not None:
        ids.insert(0, {"system": c.SID_RECORD, "value": record})
    return ids


def random_id() -> str:
    return str(uuid.uuid4())


def conditional_entry(full_url: str, resource: Any, if_none_exist: str) -> dict[str, Any]:
    """A transaction entry that creates ``resource`` (a fhir.resources model) unless a resource
    matching ``if_none_exist`` exists."""
    return {
        "fullUrl": full_url,
        "resource": resource.model_dump(mode="json", exclude_none=True),
        "request": {
            "method": "POST",
            "url": resource.get_resource_type(),
            "ifNoneExist": if_none_exist,
        },
    }


def image_notes(ctx: Any, facts: Any, consent_state: str) -> list[str]:
    """What the record says in words about an image besides its purpose."""
    notes = []
    if ctx.remote:
        notes.append("Made or received during a remote consultation.")
    if ctx.best_interests:
        notes.append(f"Best interests of the child: {ctx.best_interests}")
    if facts.metadata_removed:
        notes.append("Removed before storage: " + ", ".join(facts.metadata_removed) + ".")
    if facts.converted_from:
        notes.append(f"Stored as {facts.media_type}, converted from {facts.converted_from}.")
    notes.append(
        {
            "implicit": "Consent implicit in the consent to the investigation (GMC).",
            "recorded": "Consent recorded: see the linked Consent.",
            "missing": "No consent recorded.",
        }[consent_state]
    )
    return notes


def provenance_resource(
    ctx: Any,
    labels: Any,
    *,
    submission_id: str,
    targets: list[str],
    now: datetime | None = None,
    record: str | None = None,
    consent: Any | None = None,
) -> dict[str, Any]:
    """Who supplied the image and when (the same in R4 and R5); ``now`` (``recorded``) defaults
    to the current time. When the author is the parent who consented, their relationship and
    the basis of their parental responsibility are the author's roles."""
    author: dict[str, Any] = {
        "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "author"}]},
        "who": (
            {"reference": ctx.operator}
            if ctx.operator
            else {"display": f"made by: {ctx.made_by.value.replace('_', ' ')}"}
        ),
    }
    if ctx.made_by in (Maker.PARENT, Maker.RELATIVE_OR_CARER):
        author["onBehalfOf"] = {"reference": ctx.patient}
    roles = parental.author_roles(consent, ctx.operator)
    if roles:
        author["role"] = roles
    agents = [author]
    if ctx.recorded_by:
        agents.append(
            {
                "type": {"coding": [{"system": c.PROVENANCE_PARTICIPANT, "code": "enterer"}]},
                "who": {"reference": ctx.recorded_by},
            }
        )
    return {
        "resourceType": "Provenance",
        "meta": new_meta(labels.without_provenance().all(), submission_id, record),
        "target": [{"reference": t} for t in targets],
        "occurredDateTime": iso(ctx.captured),
        "recorded": iso(now or datetime.now(UTC)),
        "activity": {"coding": [{"system": c.V3_DATA_OPERATION, "code": "CREATE"}]},
        "agent": agents,
    }


def binary_resource(
    facts: Any, labels: Any, *, submission_id: str, image_ref: str, record: str
) -> dict[str, Any]:
    """The Binary for the stored bytes, without them (the same in R4 and R5): the image's labels
    and a securityContext naming the image, so the server and every reader treat the bytes as
    the image."""
    return {
        "resourceType": "Binary",
        "meta": new_meta(labels.all(), submission_id, record),
        "contentType": facts.media_type,
        "securityContext": {"reference": image_ref},
    }


@dataclass(frozen=True)
class Builders:
    """A FHIR version's builders of the resources of one image (fhir.resources models), all
    with the same parameters in every version."""

    encounter: Callable[..., Any]
    binary: Callable[..., Any]
    image: Callable[..., Any]
    consent: Callable[..., Any]
    provenance: Callable[..., Any]
    bundle: Any  # the version's Bundle model
    #: what the version's JSON needs beyond its models' dump (an R5 integer64 as a string)
    finish_json: Callable[[dict[str, Any]], None] | None = None
    #: where the version's RelatedArtifact puts an address (DS4P label links)
    artifact_target: Callable[[str], dict[str, Any]] = ds4p.r4_target


@dataclass(frozen=True)
class MappedSubmission:
    """What will be sent for one image: the version's resources (fhir.resources models) and
    the transaction Bundle. Its Binary has no ``data``: the sender adds the stored bytes
    (inline, streamed, or written into the Binary right after the transaction, as the server
    allows). ``image_url`` and ``binary_url`` are the ``fullUrl`` of the image and Binary
    entries; the Binary has a client-chosen id, which the image's content URL names."""

    submission_id: str
    bundle: Any
    image: Any
    consent: Any | None
    provenance: Any
    encounter: Any | None
    binary: Any
    image_url: str
    binary_url: str
    image_key: str
    consent_key: str
    finish_json: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False)

    def bundle_json(self) -> dict[str, Any]:
        bundle: dict[str, Any] = self.bundle.model_dump(mode="json", exclude_none=True)
        if self.finish_json is not None:
            self.finish_json(bundle)
        return bundle


def assemble(
    ctx: Any,
    consent: Any | None,
    facts: Any,
    decision: Any,
    build: Builders,
    *,
    submission_id: str | None,
    new_id: Callable[[], str] | None,
    now: datetime | None,
) -> MappedSubmission:
    """The transaction of one image: a virtual Encounter for a remote consultation that names
    none, the Binary under its deterministic id (PUT, labelled, naming the image), the image,
    the Consent, the Provenance, each a conditional create on its record key so that the same
    image and consent act are stored once however often they are sent. The Bundle carries only
    the high-water mark (DS4P): the caveats and sensitivity codes stay on the entries.

    ``new_id`` makes the submission id (unless given) and the ``urn:uuid`` placeholders
    (default: random UUIDs); ``now`` is the instant the records are made (default: now). Both
    exist so that examples and tests can be reproduced exactly."""
    if decision.outcome is not Outcome.STORE:
        raise ValueError(f"only a decision to store is mapped (this one is {decision.outcome})")
    make_id = new_id or random_id
    sid = submission_id or make_id()
    image_url = f"urn:uuid:{make_id()}"
    binary_url = f"urn:uuid:{make_id()}"
    labels = decision.labels
    key = image_key(ctx.patient, facts.sha256_hex)
    ckey = consent_key(consent)

    def by_identifier(record: str) -> str:
        return f"identifier={c.SID_RECORD}|{record}"

    entries: list[dict[str, Any]] = []
    encounter = None
    encounter_ref = ctx.encounter
    if ctx.remote and not ctx.encounter:
        record = record_key(key, "encounter")
        encounter = claim(
            build.encounter(ctx, labels, submission_id=sid, record=record),
            "remote-consultation-encounter",
        )
        encounter_ref = f"urn:uuid:{make_id()}"
        entries.append(conditional_entry(encounter_ref, encounter, by_identifier(record)))

    consent_record = record_key(key, "consent", ckey) if consent is not None else None
    provenance_record = record_key(key, "provenance", ckey)
    # what backs the image's labels (DS4P): its Consent, or the policy where consent is implicit,
    # and its Provenance
    links: dict[str, Any] = {
        "justification": (
            ds4p.record_search("Consent", "identifier", consent_record)
            if consent_record
            else c.GMC_RECORDINGS_POLICY
        ),
        "documentation": ds4p.record_search("Provenance", "_tag", provenance_record),
        "target": build.artifact_target,
    }
    record = record_key(key, "binary")
    binary_ref = f"Binary/{binary_id(key)}"
    binary = claim(
        build.binary(facts, labels, submission_id=sid, image_ref=image_url, record=record),
        "image-binary",
        **links,
    )
    binary.id = binary_id(key)
    entries.append(
        {
            "fullUrl": binary_url,
            "resource": binary.model_dump(mode="json", exclude_none=True),
            # a client-chosen id: created once, found again after a lost reply, and named by
            # the image directly (not every server resolves placeholders in a url element)
            "request": {"method": "PUT", "url": binary_ref},
        }
    )
    image = claim(
        build.image(
            ctx,
            facts,
            decision,
            submission_id=sid,
            binary_url=binary_ref,
            encounter_ref=encounter_ref,
            now=now,
        ),
        "clinical-image",
        **links,
    )
    entries.append(
        conditional_entry(
            image_url, image, f"identifier={c.SID_SHA256}|{facts.sha256_hex}&subject={ctx.patient}"
        )
    )
    targets = [image_url]
    consent_res = None
    if consent is not None and consent_record is not None:
        consent_url = f"urn:uuid:{make_id()}"
        consent_res = claim(
            build.consent(
                ctx, consent, labels, submission_id=sid, image_ref=image_url, record=consent_record
            ),
            "recording-consent",
        )
        entries.append(conditional_entry(consent_url, consent_res, by_identifier(consent_record)))
        targets.append(consent_url)
    provenance = claim(
        build.provenance(
            ctx,
            labels,
            submission_id=sid,
            targets=targets,
            now=now,
            record=provenance_record,
            consent=consent,
        ),
        "image-provenance",
    )
    entries.append(
        conditional_entry(
            f"urn:uuid:{make_id()}", provenance, f"_tag={c.SID_RECORD}|{provenance_record}"
        )
    )
    bundle = build.bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "meta": {"security": [c.conf(labels.confidentiality).as_coding()]},
            "entry": entries,
        }
    )
    return MappedSubmission(
        sid,
        bundle,
        image,
        consent_res,
        provenance,
        encounter,
        binary,
        image_url,
        binary_url,
        key,
        ckey,
        build.finish_json,
    )
