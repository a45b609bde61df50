"""The profiles in profiles/ on a real server: upload them, validate the examples and everything
fhir-images wrote to the server against them, and show that validation rejects what it should.

HAPI's ``$validate`` answers 200 with an OperationOutcome even for an invalid resource, so the
issues are read, not the status. HAPI remembers a canonical URL it failed to find for minutes,
even after it is uploaded: every test here depends on ``profiles``, which PUTs all of profiles/
(by id, so re-runs are idempotent) before anything is validated.

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
from fhir_images.fhir.audit import FileAudit, audit_trail
from fhir_images.fhir.probe import ServerReport
from fhir_images.fhir.r4.records import SOURCE_NAME

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
PROFILE_FOR = {
    "Binary": f"{SD}/image-binary",
    "Media": f"{SD}/clinical-image",
    "Consent": f"{SD}/recording-consent",
    "Provenance": f"{SD}/image-provenance",
    "Encounter": f"{SD}/remote-consultation-encounter",
}
DISCLOSURE_AUDIT = f"{SD}/disclosure-audit-event"
DESTRUCTION_AUDIT = f"{SD}/destruction-audit-event"

#: Warnings that are accepted, by message pattern, each with its reason. profiles/README.md
#: lists the same keys and reasons; ``test_allow_list_is_documented`` keeps the two together.
ALLOWED_WARNINGS: dict[str, tuple[str, str]] = {
    "dom-6": (
        r"Constraint failed: dom-6:",
        "Best-practice advice that every resource have a narrative. fhir-images writes no "
        "narrative on purpose: every fact is in structured elements, and a narrative would copy "
        "free text about a sensitive image (purpose, consent discussion) into an element that "
        "cannot be labelled or stripped separately.",
    ),
    "iso-21089-deidentify": (
        r"iso-21089-lifecycle#deidentify\) was not found in the value set 'Audit Event Sub-Type'",
        "The AuditEvent of an anonymised copy (a secondary use) is coded ISO 21089 de-identify, as "
        "IHE BALP codes lifecycle events; R4's own sub-type value set (extensible) lacks ISO "
        "21089 codes.",
    ),
    "balp-authorizer": (
        r"value set 'ParticipationRoleType'.*codes = http://snomed\.info/sct#429577009",
        "IHE BALP fixes the authorizer agent of a privacy disclosure (the clinician who "
        "approved it) to SNOMED CT 429577009; R4's participation-role-type value set "
        "(extensible) has no such code.",
    ),
    "loinc-not-loaded": (
        r"CodeSystem is unknown and can't be validated: http://loinc\.org",
        "The test server has no LOINC loaded, so it cannot look up 59284-0 (Patient consent). "
        "The profile fixes that exact code by pattern, so it is checked all the same.",
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


def read_outcome(outcome: Resource) -> Outcome:
    assert outcome.get("resourceType") == "OperationOutcome", outcome
    errors, warnings, allowed = [], [], Counter[str]()
    for issue in outcome.get("issue", []):
        severity = issue.get("severity")
        if severity in ("error", "fatal"):
            errors.append(issue)
        elif severity == "warning":
            text = issue.get("diagnostics", "")
            key = next((k for k, (p, _) in ALLOWED_WARNINGS.items() if re.search(p, text)), None)
            if key:
                allowed[key] += 1
            else:
                warnings.append(issue)
    return Outcome(errors, warnings, allowed)


def validate(base: str, resource: Resource, profile: str) -> Outcome:
    r = requests.post(
        f"{base}/{resource['resourceType']}/$validate",
        params={"profile": profile},
        json=resource,
        headers=HEADERS,
        timeout=VALIDATE_TIMEOUT,
    )
    # HAPI answers 200 with the outcome; some servers use 412 for an invalid resource
    assert r.status_code in (200, 412), f"$validate: {r.status_code} {r.text[:2000]}"
    return read_outcome(r.json())


def audit_profile(audit: Resource) -> str:
    subtypes = {(s.get("system"), s.get("code")) for s in audit.get("subtype", [])}
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


def conformance_resources() -> list[Resource]:
    """profiles/*.json, code systems first, then value sets, then structure definitions."""
    order = {"CodeSystem": 0, "ValueSet": 1, "StructureDefinition": 2}
    resources = [json.loads(p.read_text()) for p in sorted(PROFILES.glob("*.json"))]
    return sorted(resources, key=lambda r: order[r["resourceType"]])


def example_resources() -> list[tuple[str, Resource]]:
    """Every resource in examples/resources/: the entries of each Bundle, and the AuditEvents."""
    out = []
    for path in sorted(RESOURCES.glob("*.json")):
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


def written_by_fhir_images(base: str, client: FhirClient) -> list[Resource]:
    """The resources fhir-images wrote: Media, Consent, Provenance and Encounter carrying the
    submission tag, and AuditEvents whose source is fhir-images (on the server, or in the audit
    file where the server refuses AuditEvents).

    HAPI cannot search a tag by its system alone, so each type is read whole and filtered.
    """
    found = [r for t in PROFILE_FOR if t != "Binary" for r in _all(base, t) if _tagged(r)]
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


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def profiles(fhir_base_url: str) -> str:
    """Upload all of profiles/ before anything is validated (PUT by id: idempotent)."""
    for resource in conformance_resources():
        url = f"{fhir_base_url}/{resource['resourceType']}/{resource['id']}"
        r = requests.put(url, json=resource, headers=HEADERS, timeout=TIMEOUT)
        assert r.status_code in (200, 201), f"PUT {url}: {r.status_code} {r.text[:1000]}"
    return fhir_base_url


@pytest.fixture(scope="module")
def client(connect: Callable[..., FhirClient]) -> FhirClient:
    return connect()


def _write_one_of_each(client: FhirClient, tmp: Path, missing: set[str]) -> None:
    """Write what is missing: example case 02 (Encounter, Media, Consent, Provenance), a
    disclosure of it, and the destruction of an image whose retention period is over."""
    client.transaction(json.loads((EXAMPLES / "fhir" / "seed-bundle.json").read_text()))
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
        assert delivered.delivered, delivered.error
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
    for key, (pattern, _reason) in ALLOWED_WARNINGS.items():
        assert f"`{key}`" in readme, f"profiles/README.md does not explain warning {key}"
        assert pattern in readme, f"profiles/README.md does not give the pattern of {key}"


def test_every_profile_has_a_snapshot(profiles: str, server_report: ServerReport) -> None:
    """The server generates a snapshot from each differential without complaint (where it has
    ``$snapshot``; a server without it validates from the differential, tested below)."""
    if not server_report.snapshot_operation:
        assert server_report.validate_operation, "a server with neither cannot check profiles"
        return
    for sd in (r for r in conformance_resources() if r["resourceType"] == "StructureDefinition"):
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


def test_examples_conform(profiles: str) -> None:
    examples = example_resources()
    assert examples, "examples/resources/ is empty: run examples/make_resources.py"
    results = [
        (name, profile_for(r), validate(profiles, r, profile_for(r))) for name, r in examples
    ]
    print(_summary("examples", results))
    assert kinds([r for _, r in examples]) == ALL_KINDS
    assert not any(o.errors or o.warnings for _, _, o in results), _report(results)


def test_everything_written_conforms(profiles: str, written: list[Resource]) -> None:
    results = [
        (
            f"{r['resourceType']}/{r.get('id', '(audit file)')}",
            profile_for(r),
            validate(profiles, r, profile_for(r)),
        )
        for r in written
    ]
    print(_summary("written to the server", results))
    assert not any(o.errors or o.warnings for _, _, o in results), _report(results)


# ------------------------------------------------------------------ the check bites


def _example(resource_type: str) -> Resource:
    bundle = json.loads(
        (RESOURCES / "04-parent-unsolicited-intimate-confirmed.bundle.json").read_text()
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


def _broken() -> list[tuple[str, Resource, str]]:
    media, consent = _example("Media"), _example("Consent")
    cases: list[tuple[str, Resource, str]] = [
        (
            "Media without a confidentiality label",
            _without_confidentiality(media),
            "confidentiality",
        ),
        (
            "Consent without a performer",
            {k: v for k, v in consent.items() if k != "performer"},
            "performer",
        ),
    ]
    practitioner = _example("Consent")
    practitioner["performer"] = [{"reference": "Practitioner/ex-gp-1"}]
    cases.append(("Consent performed by a practitioner", practitioner, "performer"))
    two = _example("Media")
    two["meta"]["security"].append({"system": c.V3_CONFIDENTIALITY, "code": "N"})
    cases.append(("Media with two confidentiality labels", two, "confidentiality"))
    no_integrity = _example("Media")
    no_integrity["meta"]["security"] = [
        s for s in no_integrity["meta"]["security"] if s["system"] != c.V3_OBSERVATION_VALUE
    ]
    cases.append(("Media without a provenance label", no_integrity, "integrity"))
    no_purpose = _example("Media")
    del no_purpose["reasonCode"]
    cases.append(("Media without a clinical purpose", no_purpose, "reasonCode"))
    not_remote = _example("Media")
    del not_remote["extension"]
    cases.append(("Media without the remote-consultation flag", not_remote, "extension"))
    audit = json.loads((RESOURCES / "audit-disclosure.json").read_text())
    for agent in audit["agent"]:
        agent["requestor"] = False
    cases.append(("Disclosure audit without a requestor", audit, "requestor"))
    return cases


BROKEN = _broken()


@pytest.mark.parametrize(("what", "resource", "mentions"), BROKEN, ids=[b[0] for b in BROKEN])
def test_nonconforming_resources_fail(
    profiles: str, what: str, resource: Resource, mentions: str
) -> None:
    outcome = validate(profiles, resource, profile_for(resource))
    assert outcome.errors, f"{what} passed validation"
    # the rule broken, by the slice's name or, where a validator gives no text, by location
    assert any(
        mentions in json.dumps(i) or "meta.security" in json.dumps(i) for i in outcome.errors
    ), [_issue_text(i) for i in outcome.errors]
