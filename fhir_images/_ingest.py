"""Ingest: intake -> policy -> mapping -> outbox, for one image.

Nothing is half-written: bad input leaves nothing behind; a refused image
leaves nothing in the outbox; a held image is kept whole in the held area; a
stored image is a complete ready entry (Bundle, bytes, decision).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import PrivateAttr

from ._context import ClinicalContext, ConsentRecord
from ._exceptions import InvalidContext, OutboxError
from ._inputs import load_structured
from ._intake import ImageFacts, Limits, claimed_type_from_name, intake
from ._outbox import Entry, EntryMeta, Outbox
from ._requests import ImageRequest
from ._result import Result
from .fhir.keys import consent_key, image_key
from .fhir.version import get_version
from .policy import Decision, Outcome, Policy, decide
from .policy.requests import DISCARD_RECORDED

log = logging.getLogger("fhir_images.ingest")


class IngestResult(Result):
    """What ingest decided and did: the decision (outcome, reasons, labels), what intake
    learned about the file, and the outbox entry it became (id, state, folder), or the entry
    or delivery it duplicates. Serialisable; ``entry`` is the live outbox entry (looked up
    again in the outbox after a round trip)."""

    decision: Decision
    facts: ImageFacts
    entry_id: str | None = None
    entry_state: Literal["ready", "held", "failed"] | None = None
    entry_path: Path | None = None
    duplicate_of: str | None = None
    #: the record kept of an image discarded at once (no image in it), when the rules say so
    discarded: dict[str, Any] | None = None
    _entry: Entry | None = PrivateAttr(default=None)

    @classmethod
    def of(
        cls,
        decision: Decision,
        facts: ImageFacts,
        entry: Entry | None,
        *,
        duplicate_of: str | None = None,
        discarded: dict[str, Any] | None = None,
    ) -> IngestResult:
        result = cls(
            decision=decision,
            facts=facts,
            entry_id=entry.id if entry else None,
            entry_state=entry.state if entry else None,
            entry_path=entry.path if entry else None,
            duplicate_of=duplicate_of,
            discarded=discarded,
        )
        result._entry = entry
        return result

    @property
    def entry(self) -> Entry | None:
        """The outbox entry (as it was when ingest returned)."""
        if self._entry is None and self.entry_id and self.entry_path is not None:
            root = self.entry_path.parent.parent
            self._entry = Outbox(root).get(self.entry_id)
        return self._entry

    def summary(self) -> dict[str, Any]:
        """The machine-readable result (the CLI's ``--json``)."""
        return {
            "decision": self.decision.outcome.value,
            "policy": self.decision.policy,
            "reasons": [r.as_dict() for r in self.decision.reasons],
            "security": [label.as_coding() for label in self.decision.labels.all()],
            "consent": self.decision.consent.value,
            "age_band": self.decision.age_band,
            "media_type": self.facts.media_type,
            "size": self.facts.size,
            "sha256": self.facts.sha256_hex,
            "metadata_removed": list(self.facts.metadata_removed),
            "outbox_entry": str(self.entry_path) if self.entry_path else None,
            "duplicate_of": self.duplicate_of,
            **({"notes": list(self.decision.notes)} if self.decision.notes else {}),
            **({"discarded": self.discarded["id"]} if self.discarded else {}),
        }


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "outcome": decision.outcome.value,
        "policy": decision.policy,
        "consent": decision.consent.value,
        "age_band": decision.age_band,
        "reasons": [r.as_dict() for r in decision.reasons],
        "security": [label.as_coding() for label in decision.labels.all()],
        **({"notes": list(decision.notes)} if decision.notes else {}),
    }


def _facts_json(facts: ImageFacts) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(facts).items() if v is not None}


def facts_from_json(data: dict[str, Any]) -> ImageFacts:
    """Rebuild the facts stored in an outbox entry."""
    fields = {f.name for f in dataclasses.fields(ImageFacts)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields
    }
    return ImageFacts(**values)


def parse_context(data: Any) -> ClinicalContext:
    """A clinical context from plain data (a mapping). Raises InvalidContext."""
    return ClinicalContext.model_validate(data)


def parse_consent(data: Any) -> ConsentRecord | None:
    """A consent record from plain data (a mapping), or None. Raises InvalidContext."""
    if data is None:
        return None
    return ConsentRecord.model_validate(data)


@dataclass(frozen=True)
class Case:
    """A case file: an image, its clinical context, its consent and the policy pack."""

    image: Path
    context: ClinicalContext
    consent: ConsentRecord | None
    policy: str
    request: ImageRequest | None = None

    _KEYS: ClassVar[frozenset[str]] = frozenset(
        {"image", "context", "consent", "policy", "request"}
    )


def load_case(path: Path) -> Case:
    """Read a case file (YAML or JSON) through the input gate.

    ``image`` and a ``consent`` given as a file name are taken relative to the case file.
    Raises InvalidContext naming the key and the rule broken.
    """
    data = load_structured(path, "case file")
    if not isinstance(data, dict):
        raise InvalidContext("the case file must be a mapping with 'image' and 'context'")
    unknown = {k for k in data if k not in Case._KEYS}
    if unknown:
        raise InvalidContext(
            f"the case file has keys it does not take (it takes {', '.join(sorted(Case._KEYS))})"
        )
    for key in ("image", "context"):
        if key not in data:
            raise InvalidContext(f"the case file needs '{key}'")
    image, policy = data["image"], data.get("policy", "default")
    if not isinstance(image, str) or not image.strip():
        raise InvalidContext("the case file's 'image' must be a file name")
    if not isinstance(policy, str):
        raise InvalidContext("the case file's 'policy' must be a policy name")
    consent = data.get("consent")
    if isinstance(consent, str):
        consent = load_structured(path.parent / consent, "consent file")
    elif consent is not None and not isinstance(consent, dict):
        raise InvalidContext("the case file's 'consent' must be a mapping or a file name")
    request = data.get("request")
    if isinstance(request, str):
        request = load_structured(path.parent / request, "request file")
    elif request is not None and not isinstance(request, dict):
        raise InvalidContext("the case file's 'request' must be a mapping or a file name")
    return Case(
        image=path.parent / image,
        context=parse_context(data["context"]),
        consent=parse_consent(consent),
        policy=policy,
        request=parse_request(request),
    )


def _meta(
    ctx: ClinicalContext,
    consent: ConsentRecord | None,
    facts: ImageFacts,
    decision: Decision,
) -> EntryMeta:
    return EntryMeta(
        id="-",
        state="held",
        content="content" + facts.extension,
        created=ctx.captured,
        patient=ctx.patient,
        sha256=facts.sha256_hex,
        media_type=facts.media_type,
        size=facts.size,
        image_key=image_key(ctx.patient, facts.sha256_hex),
        consent_key=consent_key(consent),
        decision=_decision_json(decision),
        facts=_facts_json(facts),
    )


def parse_request(data: Any) -> ImageRequest | None:
    """An image request from plain data (a mapping), or None. Raises InvalidContext."""
    if data is None:
        return None
    return ImageRequest.model_validate(data)


def _linked(context: ClinicalContext, request: ImageRequest | None) -> ClinicalContext:
    """The context linked to the request it answers (``context.request``); an image answering
    a request was asked for, so ``solicited`` is true unless the context says otherwise."""
    if request is None:
        return context
    if request.id is None:
        raise InvalidContext("request.id: record the request on the server first")
    update: dict[str, Any] = {}
    if context.request is None:
        update["request"] = request.id
    if context.solicited is None:
        update["solicited"] = True
    return context.model_copy(update=update) if update else context


def _stored_request(entry: Entry) -> ImageRequest | None:
    return parse_request(entry.read_json("request.json")) if entry.has("request.json") else None


def _files(
    ctx: ClinicalContext, consent: ConsentRecord | None, request: ImageRequest | None = None
) -> dict[str, bytes]:
    files = {"context.json": ctx.model_dump_json(indent=2).encode()}
    if consent is not None:
        files["consent.json"] = consent.model_dump_json(indent=2).encode()
    if request is not None:
        files["request.json"] = request.model_dump_json(indent=2).encode()
    return files


def ingest(
    source: Path | bytes,
    context: ClinicalContext,
    consent: ConsentRecord | None = None,
    *,
    outbox: Outbox,
    policy: str | Policy = "default",
    claimed_type: str | None = None,
    limits: Limits | None = None,
    request: ImageRequest | None = None,
) -> IngestResult:
    """Take one image or recording through intake, policy and mapping into the outbox.

    ``claimed_type`` defaults to what a path's extension claims. Raises
    :class:`BadInput` subclasses for unusable input (nothing is written).

    The same image of the same patient with the same consent act is kept once:
    a second ingest (even a concurrent one, from another process) returns the
    entry already in the outbox, or the receipt of its delivery, as ``duplicate_of``.

    ``request`` is the clinician's request the image answers (W5): the image is checked
    against it and, once stored, is ``basedOn`` it. An image the rules discard at once (an
    intimate image of an under-18 sent on request) is held and discarded in one step: the
    outbox keeps the record of it (``discarded``, no image) and the decision's ``notes`` give
    the note the clinician completes instead.
    """
    if claimed_type is None and isinstance(source, Path):
        claimed_type = claimed_type_from_name(source.name)
    context = _linked(context, request)
    # raises before any work if inconsistent
    decision = decide(context, consent, policy=policy, request=request)
    result = intake(source, claimed_type=claimed_type, limits=limits, workdir=outbox.work)
    facts = result.facts
    try:
        if decision.outcome is Outcome.REFUSE and not _discard_recorded(decision):
            return IngestResult.of(decision, facts, None)
        meta = _meta(context, consent, facts, decision)
        files = _files(context, consent, request)
        if decision.outcome is Outcome.REFUSE:
            return _held_then_discarded(outbox, decision, facts, meta, files, result.path)
        with outbox.lock():
            existing = outbox.find(image_key=meta.image_key, consent_key=meta.consent_key)
            if existing is not None:
                return IngestResult.of(decision, facts, existing, duplicate_of=existing.id)
            sent = outbox.sent_receipt(image_key=meta.image_key, consent_key=meta.consent_key)
            if sent is not None and decision.outcome is Outcome.STORE:
                return IngestResult.of(decision, facts, None, duplicate_of=sent)
            if decision.outcome is Outcome.HOLD:
                entry = outbox.write("held", meta=meta, files=files, content_from=result.path)
                return IngestResult.of(decision, facts, entry)
            mapped = get_version(meta.fhir_version).map_submission(
                context, consent, facts, decision
            )
            files["bundle.json"] = json.dumps(mapped.bundle_json(), indent=2).encode()
            entry = outbox.write(
                "ready",
                meta=meta,
                files=files,
                content_from=result.path,
                entry_id=mapped.submission_id,
            )
        return IngestResult.of(decision, facts, entry)
    finally:
        result.path.unlink(missing_ok=True)  # moved into the outbox, or not wanted


def _discard_recorded(decision: Decision) -> bool:
    return any(r.code in DISCARD_RECORDED for r in decision.reasons)


def _held_then_discarded(
    outbox: Outbox,
    decision: Decision,
    facts: ImageFacts,
    meta: EntryMeta,
    files: dict[str, bytes],
    content: Path,
) -> IngestResult:
    """Hold the image and discard it at once: the outbox keeps who, when and why (no image)."""
    with outbox.lock():
        entry = outbox.write("held", meta=meta, files=files, content_from=content)
    return _discard(outbox, entry, decision, facts)


def _discard(outbox: Outbox, entry: Entry, decision: Decision, facts: ImageFacts) -> IngestResult:
    why = "; ".join(f"{r.rule} {r.code}" for r in decision.blocking)
    record = outbox.discard(entry.id, by=f"fhir-images policy ({decision.policy})", reason=why)
    return IngestResult.of(decision, facts, None, discarded=record)


def remap(outbox: Outbox, entry: Entry, fhir_version: str) -> Entry:
    """Map a ready entry again for another FHIR version (its server's), from what the entry
    keeps: the context, the consent and the facts of the image. The rules run again with the
    entry's policy pack (a child may have grown up since): an image they no longer store is
    held, never sent and never dropped. The record keys and the Binary's id do not depend on the
    version, so an image mapped twice is still stored once."""
    ctx = parse_context(entry.read_json("context.json"))
    consent = parse_consent(entry.read_json("consent.json")) if entry.has("consent.json") else None
    request = _stored_request(entry)
    decision = decide(ctx, consent, policy=entry.meta.decision["policy"], request=request)
    facts = facts_from_json(entry.meta.facts)
    meta = entry.meta.model_copy(
        update={"decision": _decision_json(decision), "fhir_version": fhir_version}
    )
    if decision.outcome is not Outcome.STORE:
        log.warning("entry %s: the rules no longer store it; held", entry.id)
        return outbox.transition(entry, "held", meta=meta, files={})
    mapped = get_version(fhir_version).map_submission(
        ctx, consent, facts, decision, submission_id=entry.id
    )
    # the bundle first: a crash before entry.json is written leaves an entry that is mapped
    # again on the next attempt, never one whose bundle and version disagree the other way
    files = {"bundle.json": json.dumps(mapped.bundle_json(), indent=2).encode()}
    return outbox.rewrite(entry, meta=meta, files=files)


def recheck(
    outbox: Outbox,
    entry_id: str,
    consent: ConsentRecord | None = None,
    *,
    context: ClinicalContext | None = None,
    policy: str | Policy | None = None,
    request: ImageRequest | None = None,
) -> IngestResult:
    """Re-run the decision for a held entry, with newly recorded consent or context, or a new
    request the image answers (one held because its request had expired, say).

    If the image may now be stored, the entry moves to ready; otherwise it stays held with the
    new decision recorded. A held image is never dropped here, except one the rules discard at
    once (an intimate image of an under-18 answering a request), which leaves its record.
    """
    entry = outbox.get(entry_id)
    if entry.state != "held":
        raise OutboxError(f"entry {entry_id} is {entry.state}, not held")
    ctx = context or parse_context(entry.read_json("context.json"))
    if consent is None and entry.has("consent.json"):
        consent = parse_consent(entry.read_json("consent.json"))
    pack = policy or entry.meta.decision["policy"]
    if request is not None:
        ctx = _linked(ctx.model_copy(update={"request": None}), request)
    else:
        request = _stored_request(entry)
    decision = decide(ctx, consent, policy=pack, request=request)
    facts = facts_from_json(entry.meta.facts)
    files = _files(ctx, consent, request)
    meta = entry.meta.model_copy(
        update={
            "decision": _decision_json(decision),
            "patient": ctx.patient,
            "image_key": image_key(ctx.patient, facts.sha256_hex),
            "consent_key": consent_key(consent),
        }
    )
    if decision.outcome is Outcome.REFUSE and _discard_recorded(decision):
        return _discard(outbox, outbox.rewrite(entry, meta=meta, files=files), decision, facts)
    if decision.outcome is not Outcome.STORE:
        return IngestResult.of(decision, facts, outbox.rewrite(entry, meta=meta, files=files))
    mapped = get_version(meta.fhir_version).map_submission(
        ctx, consent, facts, decision, submission_id=entry.id
    )
    files["bundle.json"] = json.dumps(mapped.bundle_json(), indent=2).encode()
    new = outbox.transition(entry, "ready", meta=meta, files=files)
    return IngestResult.of(decision, facts, new)
