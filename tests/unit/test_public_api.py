"""The public API is deliberate: ``__all__`` is pinned here, every type a public signature
names is exported, and every result model survives a round trip through ``model_dump()`` /
``model_validate()`` and JSON. Changing any of this is a change integrators see: say so in
CHANGELOG.md."""

from __future__ import annotations

import enum
import inspect
import sys
import types
import typing
from datetime import UTC, datetime
from pathlib import Path

import pytest

import fhir_images
import fhir_images.fhir
import fhir_images.policy
from fhir_images import (
    AnonymisedCopy,
    Approval,
    ConsentChange,
    DeliveryResult,
    DestructionResult,
    DisclosureDecision,
    DisclosureResult,
    IngestResult,
    Outbox,
    Verdict,
    aio,
    ingest,
    load_case,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PUBLIC = {
    # operations
    "ingest", "recheck", "load_case", "load_structured", "parse_context", "parse_consent",
    "push", "retry_failed", "request_image", "load_request",
    "disclose", "read_record", "patient_records",
    "withdraw_consent", "narrow_consent", "maturity_review", "reconsent", "destroy", "anonymise",
    "approve", "refuse_approval", "pending_approvals",
    "decide", "decide_disclosure", "earliest_destruction",
    "get_policy", "register_policy", "register_schedule", "register_server",
    # results
    "IngestResult", "DeliveryResult", "DisclosureResult", "DisclosureDecision", "ConsentChange",
    "DestructionResult", "AnonymisedCopy", "Approval", "ImageRecord", "RequestResult",
    "MaturityReview", "Reconsent",
    # inputs and the types they carry
    "Case", "ClinicalContext", "Coded", "ConsentRecord", "ConsentGiver", "Explained", "ImageKind",
    "Maker",
    "Permissions", "Relationship", "ParentalResponsibility", "PRHolder", "PRBasis",
    "DisclosureRequest", "ImageRequest", "Purpose", "Role", "Limits", "Settings",
    "ImageFacts", "Decision", "Outcome", "Reason", "ConsentState", "SecurityLabels",
    "Confidentiality", "Label", "Verdict", "Policy", "RetentionSchedule",
    # the outbox and the server
    "Outbox", "Entry", "EntryMeta", "DeliveryState", "DeliveryError", "State", "AuditTrail",
    "FhirClient", "RetryPolicy", "ServerProfile", "ServerReport",
    "Auth", "BearerToken", "BasicAuth", "SmartBackendServices", "FileAudit", "RepositoryAudit",
    # errors
    "FhirImagesError", "BadInput", "InvalidContext", "InvalidRequest", "InvalidSetting",
    "InputTooLarge", "CorruptMedia", "ContentTypeMismatch", "UnsupportedMediaType",
    "PolicyNotFound", "OutboxError", "EntryNotFound", "ActionRefused", "UnsafeServer",
    "ServerError", "ServerUnavailable", "RateLimited", "AuthenticationFailed", "BadResponse",
    "ResourceNotFound", "VersionConflict", "IncompatibleServer", "PayloadTooLarge",
    "LabelError", "LabelVerificationFailed", "AuditError",
    "__version__",
}  # fmt: skip

#: The async twin: the operations that talk to a server, same names, same results.
ASYNC = {
    "push", "disclose", "read_record", "patient_records", "withdraw_consent", "narrow_consent",
    "destroy", "anonymise", "approve", "refuse_approval", "pending_approvals",
    "request_image", "load_request", "maturity_review", "reconsent",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(fhir_images.__all__) == PUBLIC
    assert len(fhir_images.__all__) == len(set(fhir_images.__all__))
    for name in fhir_images.__all__:
        assert getattr(fhir_images, name) is not None


def test_internal_helpers_are_not_exported() -> None:
    for name in ("sniff", "intake", "plan_label_change", "apply_labels", "label_image",
                 "map_submission", "PROFILES", "POLICIES"):  # fmt: skip
        assert name not in fhir_images.__all__


def _classes_in(hint: object) -> typing.Iterator[type]:
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        yield hint
    for arg in typing.get_args(hint):
        yield from _classes_in(arg)


def _every_fhir_images_name() -> dict[str, object]:
    """Names imported only for type checking are resolved from the module that defines them."""
    names: dict[str, object] = {}
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("fhir_images") and module is not None:
            names.update({k: v for k, v in vars(module).items() if isinstance(v, type)})
    return names


def _signature_classes(obj: object) -> set[type]:
    """The classes a public function's (or class's constructor's) signature names."""
    found: set[type] = set()
    targets: list[object] = [obj]
    if inspect.isclass(obj):
        if issubclass(obj, BaseException) or issubclass(obj, enum.Enum):
            return found
        for name, member in vars(obj).items():
            if name.startswith("_"):
                continue
            if isinstance(member, property):
                targets.append(member.fget)
            elif inspect.isfunction(member):
                targets.append(member)
    for target in targets:
        try:
            hints = typing.get_type_hints(target, localns=_every_fhir_images_name())
        except TypeError:
            continue
        for name, hint in hints.items():
            if not name.startswith("_"):
                found.update(_classes_in(hint))
    return found


def test_types_in_public_signatures_are_exported() -> None:
    """By the package, or by the extension API (``fhir_images.policy`` for policy packs,
    ``fhir_images.fhir`` for server profiles and the views a policy reads)."""
    exported = {
        value
        for module in (fhir_images, fhir_images.policy, fhir_images.fhir)
        for name in module.__all__
        if isinstance(value := getattr(module, name), type)
    }
    missing: dict[str, set[str]] = {}
    for name in fhir_images.__all__:
        for cls in _signature_classes(getattr(fhir_images, name)):
            if cls.__module__.startswith("fhir_images") and cls not in exported:
                missing.setdefault(name, set()).add(cls.__qualname__)
    assert not missing, f"types named in public signatures but not exported: {missing}"


def test_async_twin_has_the_server_operations() -> None:
    assert set(aio.__all__) == ASYNC
    for name in ASYNC:
        fn = getattr(aio, name)
        assert inspect.iscoroutinefunction(fn), name
        if hasattr(fhir_images, name):
            sync = inspect.signature(getattr(fhir_images, name))
            assert list(inspect.signature(fn).parameters) == list(sync.parameters), name


# ------------------------------------------------------------------------------ round trips


def _round_trips(model: typing.Any) -> None:
    cls = type(model)
    again = cls.model_validate(model.model_dump())
    assert again.model_dump() == model.model_dump()
    assert again.model_dump_json() == model.model_dump_json()
    from_json = cls.model_validate_json(model.model_dump_json())
    assert from_json.model_dump(mode="json") == model.model_dump(mode="json")


def test_ingest_result_round_trips(tmp_path: Path) -> None:
    case = load_case(EXAMPLES / "cases" / "04-parent-unsolicited-intimate-confirmed.yaml")
    outbox = Outbox(tmp_path / "outbox")
    result = ingest(case.image, case.context, case.consent, outbox=outbox)
    assert result.entry_id and result.entry_state == "ready"
    _round_trips(result)
    again = IngestResult.model_validate_json(result.model_dump_json())
    assert again.entry is not None and again.entry.id == result.entry_id
    assert again.decision.labels == result.decision.labels
    assert again.decision.reasons == result.decision.reasons


def test_every_result_round_trips(tmp_path: Path) -> None:
    now = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    approval = Approval(
        ref="Task/1", status="completed", media="Media/9", purpose="HOPERAT",
        requester="Practitioner/2", recipient="Organization/3", approver="Practitioner/4",
        approved_at=now, valid_until=now,
    )  # fmt: skip
    samples = [
        DeliveryResult(
            entry_id="e1", delivered=True, media="Media/9", consent="Consent/8",
            binary="Binary/fi-abc", state="sent",
            labels=[{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                     "code": "R"}],
        ),
        DeliveryResult(entry_id="e2", delivered=False, state="failed", error="refused",
                       error_type="VersionConflict", status=409, retry_safe=True),
        DisclosureResult(
            patient="Patient/1", purpose="TREAT",
            decisions=[DisclosureDecision("Media/9", Verdict.RELEASE, ("consent-covers",), "R")],
            withheld=[{"media": "Media/10", "reasons": ["needs-approval"]}],
            audit_events=["AuditEvent/5"], approval_requests={"Media/10": "Task/6"},
            release={"resourceType": "Bundle", "type": "collection", "entry": []},
        ),
        DisclosureResult(patient="Patient/1", purpose="TREAT", decisions=[],
                         bundle_file=tmp_path / "b.json", withheld_file=tmp_path / "w.json"),
        ConsentChange(changed=["Consent/8"], provenance=["Provenance/4"], images=["Media/9"]),
        DestructionResult(media="Media/9", deleted=["Binary/fi-abc"], audit_event="AuditEvent/7"),
        AnonymisedCopy(image=tmp_path / "a.png", media=tmp_path / "a.json"),
        approval,
    ]  # fmt: skip
    for sample in samples:
        _round_trips(sample)
    assert {type(s) for s in samples} == {
        DeliveryResult, DisclosureResult, ConsentChange, DestructionResult, AnonymisedCopy,
        Approval,
    }  # fmt: skip


def test_results_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        ConsentChange.model_validate({"changed": [], "surprise": 1})


def test_the_worked_example_uses_only_the_public_api() -> None:
    import ast

    tree = ast.parse((EXAMPLES / "ehr_backend.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fhir_images"):
            assert node.module in ("fhir_images", "fhir_images.aio"), node.module
            for alias in node.names:
                assert alias.name in fhir_images.__all__ or alias.name == "aio", alias.name
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("fhir_images.") for a in node.names)


def test_every_public_name_is_documented() -> None:
    """The API reference is built from the docstrings: a public name without one is missing
    from it (dataclasses' generated ``Name(field, ...)`` text does not count)."""
    undocumented = []
    for name in fhir_images.__all__:
        obj = getattr(fhir_images, name)
        if name.startswith("__") or typing.get_origin(obj) is typing.Literal:
            continue  # documented where they are assigned (the reference shows it)
        doc = obj.__doc__ or ""
        if not doc.strip() or doc.startswith(f"{name}("):
            undocumented.append(name)
    assert not undocumented


def test_the_api_reference_shows_every_public_name() -> None:
    import re

    page = (EXAMPLES.parent / "docs" / "reference" / "api.md").read_text()
    shown = set(re.findall(r"^::: fhir_images\.(\w+)$", page, flags=re.MULTILINE))
    assert shown == set(fhir_images.__all__) - {"__version__"}
