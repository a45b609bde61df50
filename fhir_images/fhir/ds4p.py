"""HL7 DS4P label metadata: who assigned a security label, on what basis, and what backs it.

Every label fhir-images assigns when it stores an image (on the image, its Binary, Consent,
Provenance and Encounter) carries two DS4P extensions on its ``meta.security`` Coding:

* ``extension-sec-label-classifier``: fhir-images assigned it (a logical reference to the
  software, since fhir-images is a library inside the EHR and has no Device of its own);
* ``extension-sec-label-basis``: the policy it was assigned under, as a code of fhir-images'
  label-basis code system (the GMC guidance: a sensitive image is flagged so that extra
  caution is taken when the record is disclosed, G12). DS4P asks for a basis on every label
  when more than one policy is conveyed; fhir-images always gives one.

The image's and the Binary's labels also point at what backs them
(``extension-sec-label-related-artifact``): the confidentiality code at the Consent that
justifies it (type ``justification``), or, for an image whose consent is implicit (G3), at the
GMC guidance; the integrity (provenance) code at the Provenance that documents it (type
``documentation``). The Consent and Provenance are created in the same transaction and get their
ids from the server, so the artifact is named by a search URL on their record key, which finds
exactly that resource on any server.

No inline labels are used, so ``PROCESSINLINELABEL`` is never set.

Only the system and code of a label decide anything (access, disclosure, verification): these
extensions are information for auditors and other systems. Some servers keep only the system and
code of each label (HAPI JPA stores labels in its tag tables); :func:`fhir_images.probe` reports
whether a server keeps them (``label_extensions_kept``), and where it does not, the same links are
in the record all the same (the Provenance targets the image; the Consent names it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from .. import _codes as c

__all__ = [
    "BASIS",
    "CLASSIFIER",
    "EXT_BASIS",
    "EXT_CLASSIFIER",
    "EXT_RELATED_ARTIFACT",
    "annotate",
    "r4_target",
    "r5_target",
    "record_search",
]

_DS4P = "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition"
EXT_CLASSIFIER = f"{_DS4P}/extension-sec-label-classifier"
EXT_BASIS = f"{_DS4P}/extension-sec-label-basis"
EXT_RELATED_ARTIFACT = f"{_DS4P}/extension-sec-label-related-artifact"

#: Who assigns fhir-images' labels: the software itself, by identifier.
CLASSIFIER: dict[str, Any] = {
    "type": "Device",
    "identifier": {"system": f"{c.CANONICAL_BASE}/sid/software", "value": "fhir-images"},
    "display": "fhir-images",
}
#: The policy every label is assigned under (the GMC guidance, G12).
BASIS: dict[str, str] = {
    "system": c.LOCAL_LABEL_BASIS,
    "code": "gmc-recordings",
    "display": "GMC guidance on visual and audio recordings of patients, as fhir-images applies it",
}


def record_search(resource_type: str, param: str, record: str) -> str:
    """A search URL that finds the one resource stored under a record key."""
    return f"{resource_type}?{param}={quote(f'{c.SID_RECORD}|{record}', safe=':/')}"


def r4_target(url: str) -> dict[str, Any]:
    """Where an R4 RelatedArtifact names what it is about: its ``url``."""
    return {"url": url}


def r5_target(url: str) -> dict[str, Any]:
    """R5's RelatedArtifact has no ``url``: the address goes in its ``document``."""
    return {"document": {"url": url}}


def _artifact(
    kind: str, url: str, display: str, target: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    return {
        "url": EXT_RELATED_ARTIFACT,
        "valueRelatedArtifact": {"type": kind, "display": display, **target(url)},
    }


def annotate(
    codings: Iterable[dict[str, Any]],
    *,
    justification: str | None = None,
    documentation: str | None = None,
    target: Callable[[str], dict[str, Any]] = r4_target,
) -> list[dict[str, Any]]:
    """``meta.security`` codings with their DS4P extensions (see the module docstring):
    ``justification`` is the URL of what justifies the confidentiality code (the Consent, or
    the policy), ``documentation`` that of the Provenance documenting the integrity code;
    ``target`` puts an address in a RelatedArtifact of the FHIR version (:func:`r4_target`,
    :func:`r5_target`)."""
    out = []
    for coding in codings:
        extensions: list[dict[str, Any]] = [
            {"url": EXT_CLASSIFIER, "valueReference": dict(CLASSIFIER)},
            {"url": EXT_BASIS, "valueCoding": dict(BASIS)},
        ]
        system = coding.get("system")
        if system == c.V3_CONFIDENTIALITY and justification:
            extensions.append(
                _artifact(
                    "justification", justification, "what justifies this confidentiality", target
                )
            )
        if system == c.V3_OBSERVATION_VALUE and documentation:
            extensions.append(
                _artifact("documentation", documentation, "who supplied the image", target)
            )
        out.append(
            {**{k: v for k, v in coding.items() if k != "extension"}, "extension": extensions}
        )
    return out
