"""The maturity review's pure parts: whose consent an image rests on, the Task it opens, and
the key that names a patient's Task without revealing them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_images import ActionRefused
from fhir_images import _codes as c
from fhir_images._maturity import MATURITY_AGE, _by_someone_else, _review_task, task_key
from fhir_images.fhir.r4 import R4


def _consent(cid: str, performer: str, status: str = "active"):
    return R4.consent(
        {
            "resourceType": "Consent",
            "id": cid,
            "status": status,
            "performer": [{"reference": performer}],
            "provision": {"data": [{"reference": {"reference": "Media/m1"}}]},
        }
    )


IMAGE = R4.image(
    {
        "resourceType": "Media",
        "id": "m1",
        "subject": {"reference": "Patient/t1"},
        "identifier": [{"system": c.SID_SHA256, "value": "ab" * 32}],
        "meta": {"security": [c.conf(c.Confidentiality.R).as_coding()]},
    }
)


def test_an_image_rests_on_someone_else_only_when_every_active_consent_is_theirs():
    mum = _consent("c1", "RelatedPerson/mum")
    own = _consent("c2", "Patient/t1")
    assert _by_someone_else(IMAGE, [mum])
    assert not _by_someone_else(IMAGE, [mum, own])
    assert not _by_someone_else(IMAGE, [own])
    assert not _by_someone_else(IMAGE, []), "no consent at all is the hook's concern"
    assert not _by_someone_else(IMAGE, [_consent("c3", "RelatedPerson/mum", "inactive")])


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_the_review_task_names_the_images_by_identifier_never_by_reference(version):
    task = _review_task(version, "Patient/t1", [IMAGE], MATURITY_AGE, datetime.now(UTC))
    assert task["for"] == task["focus"] == {"reference": "Patient/t1"}
    [given] = task["input"]
    assert "reference" not in given["valueReference"]
    assert given["valueReference"]["identifier"]["value"] == "ab" * 32
    assert task["identifier"][0]["value"] == task_key("Patient/t1")
    assert "t1" not in task_key("Patient/t1") and task_key("Patient/t1") != task_key("Patient/t2")
    assert task["meta"]["security"] == [c.conf(c.Confidentiality.R).as_coding()]


def test_the_review_age_is_bounded():
    from fhir_images import maturity_review

    with pytest.raises(ActionRefused, match="age"):
        maturity_review(None, age=21)  # type: ignore[arg-type]
