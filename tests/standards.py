"""The rules of IHE PCF, HL7 DS4P and IHE BALP that an interoperability test suite checks, one
function per rule, over plain FHIR JSON.

Each rule takes a resource and returns what is wrong with it (an empty list when it conforms),
so that tests can run every rule over every example and over everything written to a server,
and show, rule by rule, that a resource breaking it is caught (tests/unit/test_standards.py).
``rules_for`` chooses the rules that apply to a resource:

* IHE PCF 1.x (Privacy Consent on FHIR, an R4 profile), Foundation and Intermediate option:
  every R4 Consent;
* HL7 DS4P 1.0.0: every resource with security labels;
* IHE BALP (Basic Audit Log Patterns), privacy disclosure at the source: every AuditEvent of a
  disclosure (R4, and the same in R5's elements).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fhir_images import _codes as c
from fhir_images.fhir import ds4p

Resource = dict[str, Any]
Rule = Callable[[Resource], list[str]]

IRCP = ("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")
INLINE_LABEL_EXT = (
    "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-inline-sec-label"
)
BALP_AUTHORIZER = ("http://snomed.info/sct", "429577009")


def _codings(concept: Any) -> list[dict[str, Any]]:
    if isinstance(concept, dict):
        return [x for x in concept.get("coding", []) if isinstance(x, dict)]
    return []


def _has_code(concepts: Any, system: str, code: str) -> bool:
    items = concepts if isinstance(concepts, list) else [concepts]
    for concept in items:
        codings = _codings(concept) if "coding" in (concept or {}) else [concept]
        if any(x.get("system") == system and x.get("code") == code for x in codings if x):
            return True
    return False


def _ref_type(ref: Any) -> str | None:
    text = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(text, str):
        return None
    if text.startswith("urn:uuid:"):
        return "urn:uuid"
    parts = text.split("?")[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def _provisions(consent: Resource) -> Iterator[tuple[int, Resource]]:
    """Every provision with its depth (1 = the root)."""
    stack = [(1, consent.get("provision"))]
    while stack:
        depth, p = stack.pop()
        if isinstance(p, dict):
            yield depth, p
            stack += [(depth + 1, x) for x in p.get("provision", []) or []]


# --------------------------------------------------------------------------- IHE PCF (R4)


def pcf_scope(r: Resource) -> list[str]:
    if _has_code(r.get("scope"), c.CONSENT_SCOPE, "patient-privacy"):
        return []
    return ["scope is not patient-privacy"]


def pcf_category(r: Resource) -> list[str]:
    return [] if _has_code(r.get("category", []), c.LOINC, "59284-0") else ["no category 59284-0"]


def pcf_patient(r: Resource) -> list[str]:
    return [] if _ref_type(r.get("patient")) in ("Patient", "urn:uuid") else ["no patient"]


def pcf_date_time(r: Resource) -> list[str]:
    return [] if r.get("dateTime") else ["no dateTime"]


def pcf_performer(r: Resource) -> list[str]:
    performers = r.get("performer") or []
    if not performers:
        return ["no performer"]
    return [
        f"performer {_ref_type(p)} is neither the Patient nor a RelatedPerson"
        for p in performers
        if _ref_type(p) not in ("Patient", "RelatedPerson", "urn:uuid")
    ]


def pcf_organization(r: Resource) -> list[str]:
    orgs = r.get("organization") or []
    if not orgs or not all(o.get("reference") or o.get("display") for o in orgs):
        return ["no organization"]
    return []


def pcf_source(r: Resource) -> list[str]:
    sources = [k for k in ("sourceAttachment", "sourceIdentifier", "sourceReference") if k in r]
    return [] if len(sources) == 1 else [f"source[x] given {len(sources)} times"]


def pcf_policy(r: Resource) -> list[str]:
    policies = r.get("policy") or []
    out = [] if policies else ["no policy"]
    out += ["a policy without uri" for p in policies if not p.get("uri")]
    out += ["policy.authority is not used in PCF" for p in policies if "authority" in p]
    return out


def pcf_unused_elements(r: Resource) -> list[str]:
    return [f"{k} is not used in PCF" for k in ("policyRule", "verification") if k in r]


def pcf_provision_type(r: Resource) -> list[str]:
    provisions = list(_provisions(r))
    if not provisions:
        return ["no provision"]
    return [f"a provision at depth {d} has no type" for d, p in provisions if not p.get("type")]


def pcf_no_action_class_code(r: Resource) -> list[str]:
    return [
        f"provision.{k} at depth {d} is not allowed in PCF"
        for d, p in _provisions(r)
        for k in ("action", "class", "code")
        if k in p
    ]


def pcf_depth(r: Resource) -> list[str]:
    deepest = max((d for d, _ in _provisions(r)), default=0)
    return [] if deepest <= 2 else [f"provisions nest {deepest} levels (PCF allows 2)"]


def pcf_actor_role(r: Resource) -> list[str]:
    return [
        "a provision actor whose role is not IRCP"
        for _, p in _provisions(r)
        for actor in p.get("actor", []) or []
        if not _has_code(actor.get("role"), *IRCP)
    ]


def pcf_intermediate_data(r: Resource) -> list[str]:
    """Intermediate option: the image is named as a data instance; no securityLabel."""
    root = r.get("provision") or {}
    data = root.get("data") or []
    out = [] if data else ["the root provision names no data"]
    out += [
        f"data meaning {d.get('meaning')!r} is not instance"
        for d in data
        if d.get("meaning") != "instance"
    ]
    out += [
        f"provision.securityLabel at depth {d} (Intermediate option has none)"
        for d, p in _provisions(r)
        if "securityLabel" in p
    ]
    return out


def pcf_permit_names_purpose(r: Resource) -> list[str]:
    root = r.get("provision") or {}
    if root.get("type") == "permit" and not root.get("purpose"):
        return ["a root permit names no purpose of use"]
    return []


PCF: dict[str, Rule] = {
    "pcf-scope": pcf_scope,
    "pcf-category": pcf_category,
    "pcf-patient": pcf_patient,
    "pcf-dateTime": pcf_date_time,
    "pcf-performer": pcf_performer,
    "pcf-organization": pcf_organization,
    "pcf-source": pcf_source,
    "pcf-policy-uri": pcf_policy,
    "pcf-unused-elements": pcf_unused_elements,
    "pcf-provision-type": pcf_provision_type,
    "pcf-no-action-class-code": pcf_no_action_class_code,
    "pcf-two-levels": pcf_depth,
    "pcf-actor-ircp": pcf_actor_role,
    "pcf-intermediate-data": pcf_intermediate_data,
    "fhir-images-permit-names-purpose": pcf_permit_names_purpose,
}


# --------------------------------------------------------------------------- HL7 DS4P


def _labels(r: Resource) -> list[dict[str, Any]]:
    return [x for x in (r.get("meta") or {}).get("security", []) if isinstance(x, dict)]


def _extensions(label: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in label.get("extension", []) or [] if e.get("url") == url]


def ds4p_one_confidentiality(r: Resource) -> list[str]:
    n = sum(1 for x in _labels(r) if x.get("system") == c.V3_CONFIDENTIALITY)
    return [] if n == 1 else [f"{n} confidentiality codes (DS4P: exactly one)"]


def ds4p_related_artifact(r: Resource) -> list[str]:
    out = []
    for label in _labels(r):
        for ext in _extensions(label, ds4p.EXT_RELATED_ARTIFACT):
            artifact = ext.get("valueRelatedArtifact") or {}
            if artifact.get("type") not in ("justification", "documentation"):
                out.append(f"related artifact of type {artifact.get('type')!r}")
            if not any(k in artifact for k in ("resource", "url", "document")):
                out.append("related artifact names no resource, url or document")
    return out


def ds4p_classifier(r: Resource) -> list[str]:
    return [
        "classifier without a valueReference"
        for label in _labels(r)
        for ext in _extensions(label, ds4p.EXT_CLASSIFIER)
        if not ext.get("valueReference")
    ]


def ds4p_basis(r: Resource) -> list[str]:
    """A basis on every label when the labels convey more than one policy."""
    labels = _labels(r)
    bases = {
        (e.get("valueCoding") or {}).get("code")
        for x in labels
        for e in _extensions(x, ds4p.EXT_BASIS)
    }
    if len(bases) > 1 and not all(_extensions(x, ds4p.EXT_BASIS) for x in labels):
        return ["more than one policy conveyed, and a label without its basis"]
    return []


def ds4p_inline(r: Resource) -> list[str]:
    flagged = any(x.get("code") == "PROCESSINLINELABEL" for x in _labels(r))
    inline = INLINE_LABEL_EXT in repr(r)
    if flagged != inline:
        return ["PROCESSINLINELABEL is set if and only if inline labels are used"]
    return []


DS4P: dict[str, Rule] = {
    "ds4p-one-confidentiality": ds4p_one_confidentiality,
    "ds4p-related-artifact": ds4p_related_artifact,
    "ds4p-classifier": ds4p_classifier,
    "ds4p-basis": ds4p_basis,
    "ds4p-inline-labels": ds4p_inline,
}


def fhir_images_label_metadata(r: Resource) -> list[str]:
    """What fhir-images itself writes (not a DS4P requirement): a classifier and a basis on
    every label, and on an image or Binary the links to what justifies and documents them."""
    out = []
    for label in _labels(r):
        for url in (ds4p.EXT_CLASSIFIER, ds4p.EXT_BASIS):
            if not _extensions(label, url):
                out.append(f"label {label.get('code')} has no {url.rsplit('-', 1)[1]}")
    if r.get("resourceType") in ("Media", "DocumentReference", "Binary"):
        kinds = {
            (ext.get("valueRelatedArtifact") or {}).get("type")
            for label in _labels(r)
            for ext in _extensions(label, ds4p.EXT_RELATED_ARTIFACT)
        }
        out += [f"no {k} artifact" for k in ("justification", "documentation") if k not in kinds]
    return out


# --------------------------------------------------------------------------- IHE BALP


def _agent(r: Resource, code: str) -> list[dict[str, Any]]:
    return [a for a in r.get("agent", []) if _has_code(a.get("type"), c.DICOM, code)]


def _network(agent: dict[str, Any]) -> bool:
    network = agent.get("network")
    if isinstance(network, dict):
        return bool(network.get("address"))
    return any(agent.get(k) for k in ("networkString", "networkUri", "networkReference"))


def balp_event(r: Resource) -> list[str]:
    out = []
    if r.get("type"):  # R4
        if not _has_code(r.get("type"), *c.DCM_EXPORT[:2]):
            out.append("type is not DCM 110106")
        if not _has_code(r.get("subtype", []), c.ISO_LIFECYCLE, "disclose"):
            out.append("subtype is not ISO 21089 disclose")
    else:  # R5
        if not _has_code(r.get("category", []), *c.DCM_EXPORT[:2]):
            out.append("category is not DCM 110106")
        if not _has_code(r.get("code"), c.ISO_LIFECYCLE, "disclose"):
            out.append("code is not ISO 21089 disclose")
    if r.get("action") != "R":
        out.append("action is not R")
    return out


def balp_source(r: Resource) -> list[str]:
    agents = _agent(r, "110153")
    if len(agents) != 1:
        return [f"{len(agents)} source agents"]
    [agent] = agents
    out = [] if agent.get("who") else ["the source agent has no who"]
    out += [] if _network(agent) else ["the source agent has no network address"]
    if agent.get("who") != (r.get("source") or {}).get("observer"):
        out.append("the source agent is not the source observer")
    return out


def balp_recipient(r: Resource) -> list[str]:
    agents = _agent(r, "110152")
    if not agents:
        return ["no recipient agent"]
    out = ["a recipient agent has no who" for a in agents if not a.get("who")]
    out += ["a recipient agent has no network address" for a in agents if not _network(a)]
    return out


def balp_entities(r: Resource) -> list[str]:
    entities = r.get("entity", []) or []
    out = [] if len(entities) >= 2 else [f"{len(entities)} entities (at least 2)"]
    patients = [
        e
        for e in entities
        if _has_code(e.get("role"), c.OBJECT_ROLE, "1")
        and _ref_type(e.get("what")) == "Patient"
        and ("type" not in e or _has_code(e.get("type"), c.AUDIT_ENTITY_TYPE, "1"))
    ]
    out += [] if patients else ["no patient entity (type 1, role 1)"]
    return out


def balp_outcome_and_purpose(r: Resource) -> list[str]:
    out = [] if r.get("outcome") else ["no outcome"]
    if not (r.get("purposeOfEvent") or r.get("authorization")):
        out.append("no purpose of use")
    return out


def balp_authorizer(r: Resource) -> list[str]:
    return [
        "an authorizer agent without who"
        for a in r.get("agent", [])
        if _has_code(a.get("type"), *BALP_AUTHORIZER) and not a.get("who")
    ]


BALP: dict[str, Rule] = {
    "balp-event": balp_event,
    "balp-source-agent": balp_source,
    "balp-recipient-agent": balp_recipient,
    "balp-entities": balp_entities,
    "balp-outcome-purpose": balp_outcome_and_purpose,
    "balp-authorizer": balp_authorizer,
}

ALL: dict[str, Rule] = {**PCF, **DS4P, **BALP}


def is_disclosure(r: Resource) -> bool:
    return r.get("resourceType") == "AuditEvent" and (
        _has_code(r.get("subtype", []), c.ISO_LIFECYCLE, "disclose")
        or _has_code(r.get("code"), c.ISO_LIFECYCLE, "disclose")
    )


def rules_for(r: Resource, version: str) -> dict[str, Rule]:
    """The rules that apply to a resource of a FHIR version (R4 or R5)."""
    rules: dict[str, Rule] = {}
    if r.get("resourceType") == "Consent" and version == "R4":
        rules.update(PCF)
    if _labels(r):
        rules.update(DS4P)
    if is_disclosure(r):
        rules.update(BALP)
    return rules


def problems(r: Resource, version: str) -> dict[str, list[str]]:
    """What each applicable rule finds wrong with a resource (only the rules that do)."""
    found = {name: rule(r) for name, rule in rules_for(r, version).items()}
    return {name: issues for name, issues in found.items() if issues}
