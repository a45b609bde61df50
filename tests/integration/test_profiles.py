"""The profiles in profiles/ on a real server: upload them, validate the examples and everything
fhir-images wrote to the server against them, and show that validation rejects what it should.

The server's FHIR version chooses the set: on R4, profiles/ (code systems, value sets and the R4
structure definitions) and the examples in examples/resources/; on R5, the same code systems and
value sets with the R5 structure definitions of profiles/r5/ (same canonical URLs), and the
examples in examples/resources/r5/. R4 definitions are never loaded into an R5 server.

HAPI's ``$validate`` answers 200 with an OperationOutcome even for an invalid resource, so the
issues are read, not the status. HAPI remembers a canonical URL it failed to find for minutes,
even after it is uploaded: every test here depends on ``profiles``, which makes sure the server
has every resource of profiles/ before anything is validated. The bundled HAPI (R4 and R5) has
them from the start (hapi.sh builds the FHIR package and the server installs it), so nothing is
uploaded there; on another server (HFS, a user's own) each resource that is missing, or differs
from its file, is PUT (by id, so re-runs are idempotent).

Pytest runs the integration files alphabetically, so in the full suite this module runs after
test_delivery.py and test_lifecycle.py and validates what they wrote. Run alone, it first writes
one of each kind itself (the seed data, example case 02 ingested and pushed, a disclosure and a
destruction), so it never validates an empty set.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_images import (
    DisclosureRequest,
    FhirClient,
    Outbox,
    destroy,
    disclose,
    ingest,
    load_structured,
    parse_consent,
    parse_context,
    push,
    synthetic,
)
from fhir_images import _codes as c
from fhir_images import _igpackage as ig
from fhir_images.fhir import ds4p
from fhir_images.fhir.audit import FileAudit, audit_trail
from fhir_images.fhir.probe import ServerReport
from fhir_images.fhir.r4.records import SOURCE_NAME
from fhir_images.fhir.version import FhirVersion

from .. import standards
from ..conftest import seed_bundle
from ..factories import make_consent, make_context

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
EXAMPLES = ROOT / "examples"
RESOURCES = EXAMPLES / "resources"

FHIR_JSON = "application/fhir+json"
HEADERS = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
TIMEOUT = 60
VALIDATE_TIMEOUT = 300  # the first $validate loads the core definitions

SD = f"{c.CANONICAL_BASE}/StructureDefinition"
#: The structure definitions of each FHIR version (the code systems and value sets, in
#: profiles/ itself, are the same for both), and its examples.
STRUCTURE_DEFINITIONS = {"R4": PROFILES, "R5": PROFILES / "r5"}
EXAMPLES_OF = {"R4": RESOURCES, "R5": RESOURCES / "r5"}
#: The profile of each resource type fhir-images writes (the image is a Media in R4 and a
#: DocumentReference in R5; both have the profile clinical-image of their version).
PROFILE_FOR = {
    "Binary": f"{SD}/image-binary",
    "Media": f"{SD}/clinical-image",
    "DocumentReference": f"{SD}/clinical-image",
    "Consent": f"{SD}/recording-consent",
    "Provenance": f"{SD}/image-provenance",
    "Encounter": f"{SD}/remote-consultation-encounter",
}
DISCLOSURE_AUDIT = f"{SD}/disclosure-audit-event"
DESTRUCTION_AUDIT = f"{SD}/destruction-audit-event"

#: Warnings that are accepted, by message pattern, each with its reason and the FHIR versions
#: of the servers that give it. profiles/README.md lists the same keys and reasons;
#: ``test_allow_list_is_documented`` keeps the two together.
ALLOWED_WARNINGS: dict[str, tuple[str, str, frozenset[str]]] = {
    "dom-6": (
        r"Constraint failed: dom-6:",
        "Best-practice advice that every resource have a narrative. fhir-images writes no "
        "narrative on purpose: every fact is in structured elements, and a narrative would copy "
        "free text about a sensitive image (purpose, consent discussion) into an element that "
        "cannot be labelled or stripped separately. (The R5 DocumentReference is the exception: "
        "its narrative holds the notes R4's Media holds in note, which R5 lacks.)",
        frozenset({"R4", "R5"}),
    ),
    "iso-21089-deidentify": (
        r"iso-21089-lifecycle#deidentify\) was not found in the value set 'Audit Event Sub-Type'",
        "The AuditEvent of an anonymised copy (a secondary use) is coded ISO 21089 de-identify, as "
        "IHE BALP codes lifecycle events; R4's own sub-type value set (extensible) lacks ISO "
        "21089 codes.",
        frozenset({"R4"}),
    ),
    "balp-authorizer": (
        r"value set 'ParticipationRoleType'.*codes = http://snomed\.info/sct#429577009",
        "IHE BALP fixes the authorizer agent of a privacy disclosure (the clinician who "
        "approved it) to SNOMED CT 429577009; R4's participation-role-type value set "
        "(extensible) has no such code.",
        frozenset({"R4"}),
    ),
    "loinc-not-loaded": (
        r"CodeSystem is unknown and can't be validated: http://loinc\.org",
        "The test server has no LOINC loaded, so it cannot look up 59284-0 (Patient consent). "
        "The profile fixes that exact code by pattern, so it is checked all the same.",
        frozenset({"R4", "R5"}),
    ),
    "r5-security-labels": (
        r"was not found in the value set 'All Security Labels' "
        r"\(http://hl7\.org/fhir/ValueSet/security-labels",
        "R5's security-labels value set (extensible, on every meta.security) takes the v3-ActCode "
        "sensitivity codes and handling caveats (PHY, ADOL, CPLYCD, NORDSCLCDS, ...) through "
        "is-a filters, which HAPI's R5 terminology cannot expand: its v3 code systems state "
        "their hierarchy as properties. The codes are in that value set. The profiles' own "
        "label slices check every label against the value sets of profiles/, whose codes are "
        "listed one by one.",
        frozenset({"R5"}),
    ),
    "r5-purpose-of-use": (
        r"was not found in the value set 'PurposeOfUse' "
        r"\(http://terminology\.hl7\.org/ValueSet/v3-PurposeOfUse",
        "R5's Consent.provision.purpose is bound (extensible) to v3-PurposeOfUse, an is-a "
        "filter on v3-ActReason that HAPI's R5 terminology cannot expand (as above). TREAT, COC, "
        "TRAIN and HRESCH are purposes of use in v3-ActReason.",
        frozenset({"R5"}),
    ),
    "dicom-cid-33": (
        r"ValueSet 'http://dicom\.nema\.org/medical/dicom/current/output/chtml/part16/"
        r"sect_CID_33\.html' not found",
        "R5 binds DocumentReference.modality (extensible) to DICOM CID 33 by the address of a "
        "web page, which no server can resolve as a value set. fhir-images writes the DICOM "
        "modality codes (XC, US, ES, DX, SM) of CID 33 and its own image-kind code.",
        frozenset({"R5"}),
    ),
    "dicom-not-loaded": (
        r"CodeSystem has CodeSystem\.content=not-present but contents were not found: "
        r"http://dicom\.nema\.org/resources/ontology/DCM",
        "The test server has no DICOM codes loaded, so it cannot expand R5's "
        "participation-role-type value set (preferred, on AuditEvent.agent.type) for the "
        "source and destination roles 110153 and 110152. The profiles fix those exact codes by "
        "pattern, so they are checked all the same.",
        frozenset({"R5"}),
    ),
    "media-type-not-loaded": (
        r"CodeSystem is unknown and can't be validated: "
        r"http://terminology\.hl7\.org/CodeSystem/media-type",
        "HAPI's R5 terminology has no media-type code system (R4 Media.type's), which "
        "fhir-images uses for the image's category (image, video, audio). The profile "
        "clinical-image checks those three codes with a constraint.",
        frozenset({"R5"}),
    ),
}

Resource = dict[str, Any]


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Outcome:
    errors: list[Resource]
    warnings: list[Resource]  # not allow-listed
    allowed: Counter[str]  # allow-listed warnings, by key


def _issue_text(issue: Resource) -> str:
    where = ",".join(issue.get("expression", []) or issue.get("location", []))
    return f"{issue.get('severity')} {where}: {issue.get('diagnostics', '')}"


def allowed_warnings(version: str) -> dict[str, str]:
    """The patterns of the warnings accepted on a server of this FHIR version, by key."""
    return {k: p for k, (p, _, versions) in ALLOWED_WARNINGS.items() if version in versions}


def read_outcome(outcome: Resource, version: str) -> Outcome:
    assert outcome.get("resourceType") == "OperationOutcome", outcome
    errors, warnings, allowed = [], [], Counter[str]()
    patterns = allowed_warnings(version)
    for issue in outcome.get("issue", []):
        severity = issue.get("severity")
        if severity in ("error", "fatal"):
            errors.append(issue)
        elif severity == "warning":
            text = issue.get("diagnostics", "")
            key = next((k for k, p in patterns.items() if re.search(p, text)), None)
            if key:
                allowed[key] += 1
            else:
                warnings.append(issue)
    return Outcome(errors, warnings, allowed)


def validate(base: str, resource: Resource, profile: str, version: str) -> Outcome:
    r = requests.post(
        f"{base}/{resource['resourceType']}/$validate",
        params={"profile": profile},
        json=resource,
        headers=HEADERS,
        timeout=VALIDATE_TIMEOUT,
    )
    # HAPI answers 200 with the outcome; some servers use 412 for an invalid resource
    assert r.status_code in (200, 412), f"$validate: {r.status_code} {r.text[:2000]}"
    return read_outcome(r.json(), version)


def audit_profile(audit: Resource) -> str:
    # R4 subtype Codings, R5 the codings of code
    codings = audit.get("subtype") or (audit.get("code") or {}).get("coding") or []
    subtypes = {(s.get("system"), s.get("code")) for s in codings}
    if (c.ISO_LIFECYCLE, "disclose") in subtypes:
        return DISCLOSURE_AUDIT
    if (c.ISO_LIFECYCLE, "destroy") in subtypes:
        return DESTRUCTION_AUDIT
    if (c.ISO_LIFECYCLE, "deidentify") in subtypes:  # an anonymised copy: the base spec
        return BASE_PROFILE + "AuditEvent"
    raise AssertionError(f"no profile for this fhir-images AuditEvent: {json.dumps(audit)}")


BASE_PROFILE = "http://hl7.org/fhir/StructureDefinition/"


def profile_for(resource: Resource) -> str:
    if resource["resourceType"] == "AuditEvent":
        return audit_profile(resource)
    return PROFILE_FOR[resource["resourceType"]]


def conformance_resources(version: str) -> list[Resource]:
    """The code systems and value sets of profiles/, then the structure definitions of the FHIR
    version (profiles/*.json for R4, profiles/r5/*.json for R5)."""
    order = {"CodeSystem": 0, "ValueSet": 1}
    terminology = [
        r
        for r in (json.loads(p.read_text()) for p in sorted(PROFILES.glob("*.json")))
        if r["resourceType"] in order
    ]
    definitions = [
        json.loads(p.read_text())
        for p in sorted(STRUCTURE_DEFINITIONS[version].glob("StructureDefinition-*.json"))
    ]
    assert all(d["fhirVersion"].startswith(version_release(version)) for d in definitions)
    return sorted(terminology, key=lambda r: order[r["resourceType"]]) + definitions


def version_release(version: str) -> str:
    return {"R4": "4.0.", "R5": "5.0."}[version]


def example_resources(version: str) -> list[tuple[str, Resource]]:
    """Every example of a FHIR version: the entries of each Bundle, and the AuditEvents."""
    out = []
    for path in sorted(EXAMPLES_OF[version].glob("*.json")):
        data = json.loads(path.read_text())
        if data["resourceType"] == "Bundle":
            out += [
                (f"{path.name}#{i}:{e['resource']['resourceType']}", e["resource"])
                for i, e in enumerate(data["entry"])
            ]
        else:
            out.append((path.name, data))
    return out


def _all(base: str, resource_type: str, **extra: str) -> Iterator[Resource]:
    """Every resource of a type on the server, following the paging links."""
    url: str | None = f"{base}/{resource_type}"
    params: dict[str, str] | None = {"_count": "200", **extra}
    while url:
        r = requests.get(url, params=params, headers=HEADERS, timeout=TIMEOUT)
        assert r.status_code == 200, f"search {resource_type}: {r.status_code} {r.text[:500]}"
        bundle = r.json()
        params = None  # the next link carries them
        for entry in bundle.get("entry", []):
            if entry.get("search", {}).get("mode", "match") == "match":
                yield entry["resource"]
        url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)


def _tagged(resource: Resource) -> bool:
    return any(
        t.get("system") in (c.SID_SUBMISSION, c.SID_RECORD)
        for t in resource.get("meta", {}).get("tag", [])
    )


def as_read(resource: Resource) -> Resource:
    """A resource as the server sent it, with R5's integer64 (``Attachment.size``) a JSON string
    again: HAPI's R5 JSON writer gives it as a number, which the same server's validator then
    rejects ("the primitive value must be a string"), whatever the client sent."""
    for content in (
        resource.get("content") or [] if resource["resourceType"] == "DocumentReference" else []
    ):
        attachment = content.get("attachment") or {}
        if isinstance(attachment.get("size"), int):
            attachment["size"] = str(attachment["size"])
    return resource


def written_by_fhir_images(base: str, client: FhirClient) -> list[Resource]:
    """The resources fhir-images wrote: the image (Media or DocumentReference), Consent,
    Provenance and Encounter carrying the submission tag, and AuditEvents whose source is
    fhir-images (on the server, or in the audit file where the server refuses AuditEvents).

    HAPI cannot search a tag by its system alone, so each type is read whole and filtered.
    """
    types = [client.version.image_type, "Consent", "Provenance", "Encounter"]
    found = [as_read(r) for t in types for r in _all(base, t) if _tagged(r)]
    # Binaries without their bytes (the labels and securityContext are what is profiled)
    found += [
        r for r in _all(base, "Binary", _elements="securityContext,contentType") if _tagged(r)
    ]
    trail = audit_trail(client)
    audits = (
        [e["resource"] for e in trail.entries()]
        if isinstance(trail, FileAudit)
        else _all(base, "AuditEvent")
    )
    found += [
        a for a in audits if a.get("source", {}).get("observer", {}).get("display") == SOURCE_NAME
    ]
    return found


def kinds(resources: list[Resource]) -> set[str]:
    return {
        profile_for(r).rsplit("/", 1)[1]
        for r in resources
        if not profile_for(r).startswith(BASE_PROFILE)
    }


ALL_KINDS = {
    p.rsplit("/", 1)[1] for p in [*PROFILE_FOR.values(), DISCLOSURE_AUDIT, DESTRUCTION_AUDIT]
}


def version_of(report: ServerReport) -> str:
    """R4 or R5: which profiles and examples are for this server."""
    for version in STRUCTURE_DEFINITIONS:
        if report.fhir_version.startswith(version_release(version)):
            return version
    raise AssertionError(f"no profiles for FHIR {report.fhir_version}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def version(server_report: ServerReport, fhir_version: FhirVersion) -> str:
    """The server's FHIR version, R4 or R5 (the probe's, and the client's version module's)."""
    name = version_of(server_report)
    assert name == fhir_version.name, (name, fhir_version.name)
    return name


def by_canonical_url(base: str, resource: Resource) -> list[Resource]:
    """The resources of the server with the canonical URL of ``resource``."""
    r = requests.get(
        f"{base}/{resource['resourceType']}",
        params={"url": resource["url"]},
        headers=HEADERS,
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, f"search {resource['url']}: {r.status_code} {r.text[:500]}"
    return [e["resource"] for e in r.json().get("entry", [])]


def ensure_conformance_resources(base: str, version: str) -> list[str]:
    """Make the server hold every resource of profiles/ for its FHIR version, each once (what
    ``fhir-images profiles load`` does): PUT the ones that are missing or differ from their
    file. Returns what was PUT."""
    report = ig.load_resources(FhirClient(base), conformance_resources(version))
    return list(report.put)


@pytest.fixture(scope="module")
def profiles(fhir_base_url: str, version: str) -> str:
    """The server holds the profiles of its FHIR version before anything is validated: loaded
    at start (the bundled HAPI), else uploaded here."""
    ensure_conformance_resources(fhir_base_url, version)
    return fhir_base_url


@pytest.fixture(scope="module")
def client(connect: Callable[..., FhirClient]) -> FhirClient:
    return connect()


def _write_one_of_each(client: FhirClient, tmp: Path, missing: set[str]) -> None:
    """Write what is missing: example case 02 (Encounter, image, Consent, Provenance), a
    disclosure of it, and the destruction of an image whose retention period is over."""
    client.transaction(seed_bundle(client.version))
    case = load_structured(EXAMPLES / "cases" / "02-adult-rash-video-consultation.yaml")
    ctx = parse_context(case["context"])
    consent = parse_consent(load_structured(EXAMPLES / "consent" / "adult-remote-rash.yaml"))
    outbox = Outbox(tmp / "outbox")
    image = (EXAMPLES / "cases" / str(case["image"])).resolve()
    ingest(image, ctx, consent, outbox=outbox)
    if "disclosure-audit-event" in missing:
        # the same image is delivered once per patient; for the disclosure it must be there
        results = push(client, outbox)
        assert all(r.delivered for r in results), [r.error for r in results]
        request = DisclosureRequest(
            purpose="COC",
            requester="Practitioner/ex-gp-1",
            role="clinician",
            clearance="V",
            recipient="Organization/ex-dermatology",
        )
        result = disclose(client, ctx.patient, request, tmp / "release")
        assert result.audit_events, [d.as_dict() for d in result.decisions]
    else:
        results = push(client, outbox)
        assert all(r.delivered for r in results), [r.error for r in results]
    if "destruction-audit-event" in missing:
        pid = f"profiles-{uuid.uuid4().hex[:10]}"
        client.transaction(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "Patient",
                            "id": pid,
                            "birthDate": "1970-01-01",
                        },
                        "request": {"method": "PUT", "url": f"Patient/{pid}"},
                    }
                ],
            }
        )
        old = datetime(2010, 3, 4, 10, 0, tzinfo=UTC)
        patient = f"Patient/{pid}"
        expired = Outbox(tmp / "expired")
        ingest(
            synthetic.jpeg(seed=4242),
            make_context(patient=patient, operator=patient, birth_date="1970-01-01", captured=old),
            make_consent(date=old),
            outbox=expired,
        )
        [delivered] = push(client, expired)
        assert delivered.delivered and delivered.media, delivered.error
        destroy(client, delivered.media, by="Practitioner/ex-gp-1", reason="Retention period over")


@pytest.fixture(scope="module")
def written(
    profiles: str, client: FhirClient, tmp_path_factory: pytest.TempPathFactory
) -> list[Resource]:
    """Everything fhir-images wrote to the server; one of each kind is written if missing."""
    found = written_by_fhir_images(profiles, client)
    missing = ALL_KINDS - kinds(found)
    if missing:
        _write_one_of_each(client, tmp_path_factory.mktemp("profiles"), missing)
        found = written_by_fhir_images(profiles, client)
    assert kinds(found) == ALL_KINDS, f"nothing of kind {ALL_KINDS - kinds(found)} to validate"
    return found


# --------------------------------------------------------------------------- tests


def test_allow_list_is_documented() -> None:
    readme = (PROFILES / "README.md").read_text()
    for key, (pattern, _reason, _versions) in ALLOWED_WARNINGS.items():
        assert f"`{key}`" in readme, f"profiles/README.md does not explain warning {key}"
        assert pattern in readme, f"profiles/README.md does not give the pattern of {key}"


def test_every_profile_has_a_snapshot(
    profiles: str, version: str, server_report: ServerReport
) -> None:
    """The server generates a snapshot from each differential without complaint (where it has
    ``$snapshot``; a server without it validates from the differential, tested below)."""
    if not server_report.snapshot_operation:
        assert server_report.validate_operation, "a server with neither cannot check profiles"
        return
    definitions = [
        r for r in conformance_resources(version) if r["resourceType"] == "StructureDefinition"
    ]
    assert {d["id"] for d in definitions} >= ALL_KINDS | {"remote-consultation"}
    for sd in definitions:
        r = requests.get(
            f"{profiles}/StructureDefinition/{sd['id']}/$snapshot",
            headers=HEADERS,
            timeout=VALIDATE_TIMEOUT,
        )
        assert r.status_code == 200, f"{sd['id']}: {r.status_code} {r.text[:1000]}"
        snapshot = r.json()
        assert snapshot.get("snapshot", {}).get("element"), f"{sd['id']}: no snapshot"


def _report(results: list[tuple[str, str, Outcome]]) -> str:
    lines = []
    for name, profile, outcome in results:
        for issue in [*outcome.errors, *outcome.warnings]:
            lines.append(f"{name} ({profile.rsplit('/', 1)[1]}): {_issue_text(issue)}")
    return "\n".join(lines)


def _summary(what: str, results: list[tuple[str, str, Outcome]]) -> str:
    allowed: Counter[str] = Counter()
    for _, _, outcome in results:
        allowed.update(outcome.allowed)
    by_profile = Counter(p.rsplit("/", 1)[1] for _, p, _ in results)
    return (
        f"{what}: {len(results)} resources validated ({dict(sorted(by_profile.items()))}); "
        f"errors {sum(len(o.errors) for _, _, o in results)}, "
        f"warnings {sum(len(o.warnings) for _, _, o in results)}, "
        f"allow-listed warnings {dict(sorted(allowed.items()))}"
    )


def test_examples_conform(profiles: str, version: str) -> None:
    examples = example_resources(version)
    assert examples, f"no {version} examples: run examples/make_resources.py"
    results = [
        (name, profile_for(r), validate(profiles, r, profile_for(r), version))
        for name, r in examples
    ]
    print(_summary(f"{version} examples", results))
    assert kinds([r for _, r in examples]) == ALL_KINDS
    assert not any(o.errors or o.warnings for _, _, o in results), _report(results)


def test_everything_written_conforms(profiles: str, version: str, written: list[Resource]) -> None:
    results = [
        (
            f"{r['resourceType']}/{r.get('id', '(audit file)')}",
            profile_for(r),
            validate(profiles, r, profile_for(r), version),
        )
        for r in written
    ]
    print(_summary("written to the server", results))
    assert not any(o.errors or o.warnings for _, _, o in results), _report(results)


# ------------------------------------------------------------------ the check bites


def _example(version: str, resource_type: str) -> Resource:
    bundle = json.loads(
        (EXAMPLES_OF[version] / "04-parent-unsolicited-intimate-confirmed.bundle.json").read_text()
    )
    return copy.deepcopy(
        next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
        )
    )


def _without_confidentiality(resource: Resource) -> Resource:
    meta = resource["meta"]
    meta["security"] = [s for s in meta["security"] if s["system"] != c.V3_CONFIDENTIALITY]
    return resource


#: A resource fhir-images must not write, made for a FHIR version (R4 or R5) from example case
#: 04 (an intimate image of a young child, sent by a parent): the same rule broken in each
#: version's shape, with the word the validator's error names it by.
Broken = Callable[[str], tuple[Resource, str]]


def _no_confidentiality(version: str) -> tuple[Resource, str]:
    image = _example(version, IMAGE_TYPE[version])
    return _without_confidentiality(image), "confidentiality"


def _no_giver(version: str) -> tuple[Resource, str]:
    consent = _example(version, "Consent")
    giver = {"R4": "performer", "R5": "grantor"}[version]
    return {k: v for k, v in consent.items() if k != giver}, giver


def _practitioner_gives(version: str) -> tuple[Resource, str]:
    consent = _example(version, "Consent")
    giver = {"R4": "performer", "R5": "grantor"}[version]
    consent[giver] = [{"reference": "Practitioner/ex-gp-1"}]
    return consent, giver


def _two_confidentialities(version: str) -> tuple[Resource, str]:
    image = _example(version, IMAGE_TYPE[version])
    image["meta"]["security"].append({"system": c.V3_CONFIDENTIALITY, "code": "N"})
    return image, "confidentiality"


def _no_integrity(version: str) -> tuple[Resource, str]:
    image = _example(version, IMAGE_TYPE[version])
    image["meta"]["security"] = [
        s for s in image["meta"]["security"] if s["system"] != c.V3_OBSERVATION_VALUE
    ]
    return image, "integrity"


def _no_purpose(version: str) -> tuple[Resource, str]:
    image = _example(version, IMAGE_TYPE[version])
    purpose = {"R4": "reasonCode", "R5": "description"}[version]
    del image[purpose]
    return image, purpose


def _not_remote(version: str) -> tuple[Resource, str]:
    image = _example(version, IMAGE_TYPE[version])
    del image["extension"]
    return image, "extension"


def _no_requestor(version: str) -> tuple[Resource, str]:
    audit: Resource = json.loads((EXAMPLES_OF[version] / "audit-disclosure.json").read_text())
    for agent in audit["agent"]:
        agent["requestor"] = False
    return audit, "requestor"


def _pcf(change: Callable[[Resource], None], mentions: str) -> Broken:
    """An R4 Consent that breaks a rule of IHE PCF (an R4 profile: R5 has no such rule)."""

    def broken(version: str) -> tuple[Resource, str]:
        if version != "R4":
            pytest.skip("IHE PCF profiles the R4 Consent")
        consent = _example(version, "Consent")
        change(consent)
        return consent, mentions

    return broken


def _no_network(version: str) -> tuple[Resource, str]:
    audit: Resource = json.loads((EXAMPLES_OF[version] / "audit-disclosure.json").read_text())
    for agent in audit["agent"]:
        agent.pop("network", None)
        agent.pop("networkString", None)
    return audit, "network"


def _ds4p(change: Callable[[list[Resource]], None], rule: str) -> Broken:
    """An image whose labels break a rule of HL7 DS4P (the same in R4 and R5)."""

    def broken(version: str) -> tuple[Resource, str]:
        image = _example(version, IMAGE_TYPE[version])
        change(image["meta"]["security"])
        return image, rule

    return broken


def _artifact_of_another_type(labels: list[Resource]) -> None:
    for label in labels:
        for ext in label.get("extension", []):
            if ext["url"] == ds4p.EXT_RELATED_ARTIFACT:
                ext["valueRelatedArtifact"]["type"] = "citation"


def _two_policies_one_label_without(labels: list[Resource]) -> None:
    for ext in labels[0]["extension"]:
        if ext["url"] == ds4p.EXT_BASIS:
            ext["valueCoding"] = {**ext["valueCoding"], "code": "another-policy"}
    labels[1]["extension"] = [e for e in labels[1]["extension"] if e["url"] != ds4p.EXT_BASIS]


IMAGE_TYPE = {"R4": "Media", "R5": "DocumentReference"}
BROKEN: dict[str, Broken] = {
    "label linked to an artifact of another type (DS4P)": _ds4p(
        _artifact_of_another_type, "fhir-images-ds4p-related-artifact"
    ),
    "two label policies and a label without its basis (DS4P)": _ds4p(
        _two_policies_one_label_without, "fhir-images-ds4p-basis"
    ),
    "PROCESSINLINELABEL without inline labels (DS4P)": _ds4p(
        lambda labels: labels.append({"system": c.V3_ACT_CODE, "code": "PROCESSINLINELABEL"}),
        "fhir-images-ds4p-inline-labels",
    ),
    "Consent with provision.action (IHE PCF)": _pcf(
        lambda r: r["provision"].update(
            action=[{"coding": [{"system": c.CONSENT_ACTION, "code": "access"}]}]
        ),
        "action",
    ),
    "Consent with verification (IHE PCF)": _pcf(
        lambda r: r.update(verification=[{"verified": True}]), "verification"
    ),
    "Consent without organization (IHE PCF)": _pcf(lambda r: r.pop("organization"), "organization"),
    "Consent nested three levels (IHE PCF)": _pcf(
        lambda r: r["provision"]["provision"][0].update(
            provision=[{"type": "permit", "purpose": r["provision"]["purpose"]}]
        ),
        "provision",
    ),
    "Consent whose permit names no purpose": _pcf(
        lambda r: r["provision"].pop("purpose"), "fhir-images-permit-names-purpose"
    ),
    "Disclosure audit without network addresses (IHE BALP)": _no_network,
    "image without a confidentiality label": _no_confidentiality,
    "Consent without a consent giver": _no_giver,
    "Consent given by a practitioner": _practitioner_gives,
    "image with two confidentiality labels": _two_confidentialities,
    "image without a provenance label": _no_integrity,
    "image without a clinical purpose": _no_purpose,
    "image without the remote-consultation flag": _not_remote,
    "Disclosure audit without a requestor": _no_requestor,
}


@pytest.mark.parametrize("what", BROKEN)
def test_nonconforming_resources_fail(profiles: str, version: str, what: str) -> None:
    resource, mentions = BROKEN[what](version)
    outcome = validate(profiles, resource, profile_for(resource), version)
    assert outcome.errors, f"{what} passed validation"
    # the rule broken, by the slice's name or, where a validator gives no text, by location
    assert any(
        mentions in json.dumps(i) or "meta.security" in json.dumps(i) for i in outcome.errors
    ), [_issue_text(i) for i in outcome.errors]


def test_everything_written_meets_ihe_pcf_ds4p_and_balp(
    version: str, written: list[Resource], server_report: ServerReport
) -> None:
    """The rules of tests/standards.py over everything fhir-images wrote to the server: every
    Consent (R4) IHE PCF's, every label HL7 DS4P's, every disclosure IHE BALP's. Where the
    server keeps a label's extensions, each label also says who assigned it and why, and an
    image's and Binary's labels link to what backs them."""
    found = {
        f"{r['resourceType']}/{r.get('id', '(audit file)')}": standards.problems(r, version)
        for r in written
    }
    assert {k: v for k, v in found.items() if v} == {}
    kinds_checked = {r["resourceType"] for r in written if standards.rules_for(r, version)}
    assert {"Consent", "AuditEvent", IMAGE_TYPE[version], "Binary"} <= kinds_checked
    if server_report.label_extensions_kept:
        # as stored with the image (a later label change, such as a legal hold, may add plain
        # labels: the DS4P metadata informs, and is not kept up to date on every change)
        stored = [
            r
            for r in written
            if r["resourceType"] != "AuditEvent"
            and any(t.get("system") == c.SID_SUBMISSION for t in r["meta"].get("tag", []))
            and r["meta"].get("versionId") == "1"
        ]
        assert stored, "nothing stored with an image to check"
        missing = {
            f"{r['resourceType']}/{r['id']}": standards.fhir_images_label_metadata(r)
            for r in stored
        }
        assert {k: v for k, v in missing.items() if v} == {}


def test_an_r5_image_states_the_confidentiality_of_its_labels(profiles: str, version: str) -> None:
    """R5 only: a DocumentReference's securityLabel (what IHE MHD reads) must state the
    confidentiality code of its meta.security (R4's Media has no securityLabel)."""
    if version != "R5":
        pytest.skip("an R4 Media has no securityLabel")
    image = _example(version, "DocumentReference")  # labelled V
    image["securityLabel"] = [{"coding": [{"system": c.V3_CONFIDENTIALITY, "code": "N"}]}]
    outcome = validate(profiles, image, profile_for(image), version)
    assert any("fhir-images-declared-confidentiality" in json.dumps(i) for i in outcome.errors), [
        _issue_text(i) for i in outcome.errors
    ]
