"""The rules for an image's later life: when it may be destroyed (G13) and when an anonymised
copy may be made (G2). Pure; the effects are in :mod:`fhir_images._lifecycle`.

Retention schedules are data (``fhir_images/data/retention-*.json``), found by name; another
one is added with :func:`register_schedule`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from .. import _codes as c
from .._exceptions import ActionRefused
from ..fhir.views import ImageView, PatientView
from .disclosure import ImageRecord, consent_required

_SCHEDULES: dict[str, Path] = {}


def register_schedule(name: str, path: Path) -> None:
    """Make a retention schedule file available by name (``--schedule NAME``)."""
    _SCHEDULES[name] = Path(path)


@dataclass(frozen=True)
class RetentionSchedule:
    """How long each type of record is kept before it may be destroyed (the Records
    Management Code of Practice for England by default)."""

    name: str
    title: str
    record_types: dict[str, Any]
    #: whether an original recording may go once its content is in the record (W6), and why
    summary_in_record: dict[str, Any] | None = None
    #: the publication the schedule comes from
    source: dict[str, Any] | None = None

    @classmethod
    def load(cls, name: str = "england", path: Path | None = None) -> RetentionSchedule:
        """A schedule: from ``path``, a registered one, or one shipped with the package."""
        try:
            source = path or _SCHEDULES.get(name)
            if source is not None:
                data = json.loads(Path(source).read_text())
            else:
                data = json.loads(
                    resources.files("fhir_images")
                    .joinpath("data", f"retention-{name}.json")
                    .read_text()
                )
            return cls(
                data["name"],
                data["title"],
                data["record_types"],
                data.get("summary_in_record"),
                data.get("source"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            raise ActionRefused(f"no usable retention schedule named {name!r}") from None


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def earliest_destruction(
    schedule: RetentionSchedule,
    record_type: str,
    *,
    birth_date: date,
    last_treatment: date,
    deceased: date | None = None,
) -> tuple[date | None, str]:
    """The first day the record may be destroyed (None: not while the patient lives), and why."""
    if record_type not in schedule.record_types:
        raise ActionRefused(
            f"the {schedule.name} schedule has no record type {record_type!r}; "
            f"choose one of {', '.join(sorted(schedule.record_types))}"
        )
    age_at_end = (
        last_treatment.year
        - birth_date.year
        - ((last_treatment.month, last_treatment.day) < (birth_date.month, birth_date.day))
    )
    facts = {
        "any": True,
        "adult": age_at_end >= 18,
        "child": age_at_end < 18,
        "child_17_at_end": age_at_end == 17,
        "alive": deceased is None,
        "deceased": deceased is not None,
    }
    latest: date | None = date.min
    why = []
    for rule in schedule.record_types[record_type]["rules"]:
        if not facts.get(rule["applies"], False):
            continue
        if rule.get("keep_while_alive"):
            return None, f"{record_type}: kept while the patient is alive"
        if "until_birthday" in rule:
            until = _add_years(birth_date, int(rule["until_birthday"]))
            why.append(f"until the {rule['until_birthday']}th birthday ({until})")
        else:
            start = {"last_treatment": last_treatment, "death": deceased}[rule["after"]]
            assert start is not None
            until = _add_years(start, int(rule["years"]))
            why.append(f"{rule['years']} years after {rule['after'].replace('_', ' ')} ({until})")
        latest = max(latest or date.min, until)
    if latest == date.min:
        return None, f"{record_type}: no rule of the {schedule.name} schedule applies; kept"
    return latest, f"{record_type}: " + "; ".join(why)


def check_destruction(
    image: ImageView,
    patient: PatientView | None,
    *,
    schedule: RetentionSchedule,
    record_type: str,
    last_treatment: date | None,
    today: date,
    summary_in_record: str | None = None,
) -> str:
    """Why the image may be destroyed now (the retention rule); ActionRefused when it may not.

    ``summary_in_record`` says where the record holds the recording's content or an accurate
    summary of it: an original audio or video recording may then go before the record's
    period ends, where the schedule provides for it (W6); the returned reason says so."""
    if c.LEGAL_HOLD in image.labels:
        raise ActionRefused(f"{image.ref} is under a legal hold: it cannot be destroyed")
    if summary_in_record is not None:
        return _summarised(image, schedule, summary_in_record)
    if patient is None:
        raise ActionRefused(f"{image.ref} has no patient: its retention cannot be worked out")
    if patient.birth_date is None:
        raise ActionRefused(
            "the patient has no birth date: the retention period cannot be worked "
            "out, so the image is kept"
        )
    last = last_treatment or (image.created.date() if image.created else None)
    if last is None:
        raise ActionRefused("give the date of last treatment: the image has no creation date")
    until, why = earliest_destruction(
        schedule,
        record_type,
        birth_date=patient.birth_date,
        last_treatment=last,
        deceased=patient.deceased,
    )
    if until is None or today < until:
        raise ActionRefused(f"retention ({schedule.title}) says keep it: {why}")
    return why


def _summarised(image: ImageView, schedule: RetentionSchedule, where: str) -> str:
    rule = schedule.summary_in_record or {}
    if not where.strip():
        raise ActionRefused("summary_in_record: say where the record holds the content")
    if rule.get("allowed") is not True:
        raise ActionRefused(
            f"summary_in_record: the {schedule.name} schedule does not provide for destroying "
            "an original recording because its content is in the record; its period applies"
        )
    if image.kind.value not in rule.get("kinds", []):
        raise ActionRefused(
            "summary_in_record: only an original audio or video recording may go because its "
            f"content is in the record, not a {image.kind.value.replace('_', ' ')}"
        )
    return (
        f"original recording not kept: its content is in the record ({where}); "
        f"W6, {rule.get('source', schedule.title)}"
    )


#: The purposes an anonymised copy may be made for: teaching and research.
ANONYMISATION_PURPOSES = (c.TRAIN, c.HRESCH)


def check_anonymisation(record: ImageRecord, purpose: str) -> None:
    """An anonymised copy for teaching or research only when every active Consent permits that
    purpose, the bytes are the image's own, and it is a still image (G2)."""
    if purpose not in ANONYMISATION_PURPOSES:
        raise ActionRefused("anonymised copies are for teaching (TRAIN) or research (HRESCH)")
    if not consent_required(record) and not record.consents:
        raise ActionRefused(
            f"{record.ref} has implicit consent for care only; secondary use "
            "needs its own consent (G2)"
        )
    active = [x for x in record.consents if x.active]
    if not active:
        raise ActionRefused(f"no active Consent for {record.ref}: an anonymised copy is refused")
    for consent in active:
        answer = consent.provision_for(purpose)
        if not answer.permits:
            raise ActionRefused(f"not consented: {answer.why}")
    if record.binary is None or record.binary.security_context != record.ref:
        raise ActionRefused(
            f"the bytes of {record.ref} are not a Binary that names it as its securityContext"
        )
    if not (record.image.content_type or "").startswith("image/"):
        raise ActionRefused(
            "only still images can be anonymised automatically; recordings "
            "need manual review and editing"
        )
