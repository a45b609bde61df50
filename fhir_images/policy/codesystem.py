"""The decision-reason CodeSystem, generated from the one table of reasons.

Run ``python -m fhir_images.policy.codesystem`` to rewrite the file in ``profiles/``, with
``--check`` to exit 1 if it would change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._codes import LOCAL_DECISION_REASON
from .reasons import REASONS

FILE = Path(__file__).resolve().parents[1] / "profiles" / "CodeSystem-decision-reason.json"

_DESCRIPTION = (
    "The findings behind fhir-images' decision to store, hold or refuse an image (the `code` of "
    "each reason the policy gives, as in `fhir-images ingest --json` and in outbox entries). Each "
    "names the rule it comes from: G1 to G13 are the rules of the GMC's 'Making and using visual "
    "and audio recordings of patients' as applied by Medical Protection's 'Storing images in "
    "medical records'; S1 is the stricter local policy (NHS England / RCPCH principles for remote "
    "intimate assessments); W1 to W6 are the wider UK guidance (W4: GMC recordings guidance para "
    "35, a child who grows up is offered re-consent; W5: CQC GP mythbuster 100 and the NHS "
    "England / RCPCH principles, images only on a clinician's express request and no intimate "
    "images of under-18s; W6: Records Management Code of Practice, audio and visual records). "
    "The outcome property is what the finding decides on its own; the "
    "decision is the most serious outcome among the findings."
)


def codesystem() -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "id": "decision-reason",
        "url": LOCAL_DECISION_REASON,
        "version": "0.1.0",
        "name": "DecisionReason",
        "title": "Reason for a storage decision",
        "status": "active",
        "experimental": False,
        "date": "2026-11-25",
        "publisher": "fhir-images",
        "description": _DESCRIPTION,
        "jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "GB"}]}],
        "caseSensitive": True,
        "valueSet": "https://fhir-images.org/fhir/ValueSet/decision-reason",
        "content": "complete",
        "count": len(REASONS),
        "property": [
            {
                "code": "rule",
                "description": "The rule the finding comes from (G1-G13, S1 for the strict "
                "policy, W1-W6 for the wider UK guidance); repeated when the finding can "
                "come from more than one rule",
                "type": "string",
            },
            {
                "code": "outcome",
                "description": "What the finding decides on its own: store, hold or refuse",
                "type": "code",
            },
        ],
        "concept": [
            {
                "code": r.code,
                "display": r.display,
                "definition": r.definition,
                "property": [
                    *({"code": "rule", "valueString": rule} for rule in r.rules),
                    {"code": "outcome", "valueCode": r.outcome.value},
                ],
            }
            for r in REASONS.values()
        ],
    }


def text() -> str:
    return json.dumps(codesystem(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        if not FILE.exists() or FILE.read_text() != text():
            print(f"out of date: {FILE}")
            return 1
        return 0
    FILE.write_text(text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
