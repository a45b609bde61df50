"""The retention schedules of the four UK nations load, name their source, and give the period
for a child's and an adult's hospital record; an original recording summarised in the record
may go early only where the schedule provides for it (W6)."""

from __future__ import annotations

from datetime import date

import pytest

from fhir_images import ActionRefused, ImageKind, RetentionSchedule, Settings, earliest_destruction
from fhir_images import _codes as c
from fhir_images.fhir.r4 import R4
from fhir_images.fhir.views import ImageView, PatientView
from fhir_images.policy import check_destruction

NATIONS = ("england", "scotland", "wales", "northern-ireland")

CHILD_BORN, CHILD_LAST = date(2016, 4, 2), date(2026, 11, 20)  # 10 at the end of treatment
ADULT_BORN, ADULT_LAST = date(1970, 1, 1), date(2020, 3, 4)

#: (child's hospital record kept until, adult's hospital record kept until) in each nation
EXPECTED = {
    "england": (date(2041, 4, 2), date(2028, 3, 4)),  # 25th birthday; 8 years
    "scotland": (date(2041, 4, 2), date(2026, 3, 4)),  # 25th birthday; 6 years
    "wales": (date(2041, 4, 2), date(2028, 3, 4)),  # 25th birthday; 8 years
    "northern-ireland": (date(2041, 4, 2), date(2028, 3, 4)),  # 25th birthday; 8 years
}


@pytest.mark.parametrize("nation", NATIONS)
def test_each_nation_loads_and_names_its_source(nation):
    schedule = RetentionSchedule.load(nation)
    assert schedule.name == nation
    assert schedule.source and schedule.source["title"] and schedule.source["url"]
    assert {"hospital", "gp", "mental_health", "maternity"} <= set(schedule.record_types)


@pytest.mark.parametrize("nation", NATIONS)
def test_a_child_and_an_adult_in_each_nation(nation):
    schedule = RetentionSchedule.load(nation)
    child, adult = EXPECTED[nation]
    until, why = earliest_destruction(
        schedule, "hospital", birth_date=CHILD_BORN, last_treatment=CHILD_LAST
    )
    assert until == child and "25th birthday" in why
    until, _ = earliest_destruction(
        schedule, "hospital", birth_date=ADULT_BORN, last_treatment=ADULT_LAST
    )
    assert until == adult


def test_the_nation_is_a_setting():
    assert Settings.from_env({}).retention_schedule == "england"
    chosen = Settings.from_env({"FHIR_IMAGES_RETENTION_SCHEDULE": "scotland"})
    assert RetentionSchedule.load(chosen.retention_schedule).name == "scotland"


def _image(kind: ImageKind, *labels: c.Label) -> ImageView:
    """An image as the record holds it (read from an R4 Media)."""
    return R4.image(
        {
            "resourceType": "Media",
            "id": "v1",
            "meta": {
                "versionId": "1",
                "security": [x.as_coding() for x in (c.conf(c.Confidentiality.N), *labels)],
            },
            "subject": {"reference": "Patient/p1"},
            "createdDateTime": "2026-11-20T10:00:00Z",
            "modality": {"coding": [{"system": c.LOCAL_IMAGE_KIND, "code": kind.value}]},
            "content": {"url": "Binary/b1", "contentType": "video/mp4"},
        }
    )


PATIENT = PatientView("Patient/p1", date(1970, 1, 1), None)


def _destroy_check(nation: str, kind: ImageKind, summary: str | None, *labels: c.Label) -> str:
    return check_destruction(
        _image(kind, *labels),
        PATIENT,
        schedule=RetentionSchedule.load(nation),
        record_type="hospital",
        last_treatment=None,
        today=date(2026, 11, 25),
        summary_in_record=summary,
    )


@pytest.mark.parametrize("nation", ["england", "wales"])
def test_a_summarised_recording_may_go_early_where_the_code_allows(nation):
    why = _destroy_check(nation, ImageKind.VIDEO, "consultation note 2026-11-20")
    assert "W6" in why and "consultation note 2026-11-20" in why


def test_without_a_summary_the_recording_waits_for_its_period():
    with pytest.raises(ActionRefused, match="retention"):
        _destroy_check("england", ImageKind.VIDEO, None)


@pytest.mark.parametrize("nation", ["scotland", "northern-ireland"])
def test_a_schedule_without_the_provision_keeps_the_recording(nation):
    with pytest.raises(ActionRefused, match="does not provide"):
        _destroy_check(nation, ImageKind.VIDEO, "consultation note 2026-11-20")


def test_a_photo_is_not_a_recording_summarised_in_the_record():
    with pytest.raises(ActionRefused, match="audio or video"):
        _destroy_check("england", ImageKind.PHOTO, "consultation note 2026-11-20")


def test_a_legal_hold_still_wins():
    with pytest.raises(ActionRefused, match="legal hold"):
        _destroy_check("england", ImageKind.VIDEO, "note", c.LEGAL_HOLD)
