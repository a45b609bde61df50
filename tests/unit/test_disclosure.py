from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fhir_images import (
    ActionRefused,
    DisclosureRequest,
    ImageRecord,
    RetentionSchedule,
    Verdict,
    decide_disclosure,
    earliest_destruction,
)
from fhir_images import _codes as c
from fhir_images._context import Permissions
from fhir_images._disclosure import decide_one, high_water_mark, releasable_labels
from fhir_images._mapping import consent_provisions

CONF = c.V3_CONFIDENTIALITY


def media(conf: str | None = "N", *codes: tuple[str, str], subject="Patient/p1", mid="1"):
    security = [{"system": CONF, "code": conf}] if conf else []
    security += [{"system": s, "code": k} for s, k in codes]
    return {
        "resourceType": "Media",
        "id": mid,
        "subject": {"reference": subject},
        "meta": {"security": security},
    }


def consent(status="active", **perms):
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": status,
        "provision": {"type": "deny", "provision": consent_provisions(Permissions(**perms))},
    }


def record(conf="N", *codes, consents=None, **kw):
    return ImageRecord(
        media(conf, *codes, **kw),
        [consent(view=True, store=True)] if consents is None else consents,
    )


def req(purpose="TREAT", role="clinician", clearance="N", requester="Practitioner/gp1", **kw):
    return DisclosureRequest(
        purpose=purpose, role=role, clearance=clearance, requester=requester, **kw
    )


DEVAST = (c.V3_OBSERVATION_VALUE, "DEVAST")
A = c.V3_ACT_CODE


def verdict(rec, request) -> Verdict:
    return decide_one(rec, request).verdict


def test_normal_image_released_for_care():
    d = decide_one(record(), req())
    assert d.verdict is Verdict.RELEASE
    assert any("permits TREAT" in r for r in d.reasons)


def test_restricted_image_needs_clearance():
    assert verdict(record("R"), req(clearance="N")) is Verdict.WITHHOLD
    assert verdict(record("R"), req(clearance="R")) is Verdict.RELEASE
    assert verdict(record("V"), req(clearance="R")) is Verdict.WITHHOLD
    assert verdict(record("V"), req(clearance="V")) is Verdict.RELEASE


def test_missing_confidentiality_counts_as_very_restricted():
    d = decide_one(record(None), req(clearance="R"))
    assert d.verdict is Verdict.WITHHOLD
    assert any("no confidentiality label" in r for r in d.reasons)


def test_second_opinion_follows_the_consent():
    allowed = [consent(view=True, store=True, second_opinion=True)]
    refused = [consent(view=True, store=True, second_opinion=False)]
    assert verdict(record(consents=allowed), req("COC")) is Verdict.RELEASE
    d = decide_one(record(consents=refused), req("COC"))
    assert d.verdict is Verdict.WITHHOLD
    assert any("provision denys COC" in r or "denies" in r or "deny" in r for r in d.reasons)


def test_no_consent_withholds_unless_implicit():
    assert verdict(record(consents=[]), req()) is Verdict.WITHHOLD
    assert verdict(record("N", DEVAST, consents=[]), req()) is Verdict.RELEASE


def test_withdrawn_consent_withholds():
    d = decide_one(record(consents=[consent("inactive", view=True, store=True)]), req())
    assert d.verdict is Verdict.WITHHOLD and "inactive" in d.reasons[0]


def test_unreadable_consent_withholds():
    rec = ImageRecord(media(), [], consent_error="ServerUnavailable")
    assert verdict(rec, req()) is Verdict.WITHHOLD


def test_identifiable_images_never_go_for_teaching_or_research():
    rec = record(consents=[consent(view=True, store=True, teaching=True, research=True)])
    assert verdict(rec, req("TRAIN", role="teacher")) is Verdict.WITHHOLD
    assert verdict(rec, req("HRESCH", role="researcher")) is Verdict.WITHHOLD


def test_patient_gets_own_images_but_not_nopat_ones_without_approval():
    own = req("PATRQT", role="patient", requester="Patient/p1")
    assert verdict(record("R"), own) is Verdict.RELEASE  # their own copy: no clearance needed
    assert verdict(record("V", (A, "NOPAT")), own) is Verdict.APPROVE
    approved = req(
        "PATRQT", role="patient", requester="Patient/p1", approved=frozenset({"Media/1"})
    )
    assert verdict(record("V", (A, "NOPAT")), approved) is Verdict.RELEASE
    assert verdict(record(subject="Patient/other"), own) is Verdict.WITHHOLD


def test_family_request_of_restricted_image_needs_review():
    fam = req("FAMRQT", role="family", requester="RelatedPerson/mum", clearance="R")
    assert verdict(record("R"), fam) is Verdict.APPROVE
    assert verdict(record("N"), fam) is Verdict.RELEASE


def test_human_approval_caveat():
    assert verdict(record("V", (A, "HUAPRV")), req(clearance="V")) is Verdict.APPROVE


def test_emergency_treatment_breaks_the_glass_for_r_only():
    assert verdict(record("R"), req("ETREAT")) is Verdict.RELEASE
    assert verdict(record("V"), req("ETREAT")) is Verdict.APPROVE


def test_request_validation():
    with pytest.raises(ValidationError):
        req("PATRQT", role="clinician")
    with pytest.raises(ValidationError):
        req("FAMRQT", role="clinician")
    with pytest.raises(ValidationError):
        req("SHOPPING")


def test_released_labels_drop_sensitivity_codes():
    security = media(
        "V", (A, "PHY"), (c.LOCAL_SENSITIVITY, "intimate"), (A, "NORDSCLCDS"), (A, "SDV")
    )["meta"]["security"]
    kept = {s["code"] for s in releasable_labels(security)}
    assert kept == {"V", "NORDSCLCDS"}


def test_high_water_mark_only_counts_what_is_released():
    decisions = decide_disclosure([record("N", mid="1"), record("V", mid="2")], req(clearance="R"))
    assert [d.verdict for d in decisions] == [Verdict.RELEASE, Verdict.WITHHOLD]
    assert high_water_mark(decisions) == "N"


# ------------------------------------------------------------------------------ properties

LEVEL = {"N": 3, "R": 4, "V": 5}
label_sets = st.lists(
    st.sampled_from([(A, "NOPAT"), (A, "HUAPRV"), (A, "PHY"), DEVAST, (A, "NORDSCLCDS")]),
    max_size=4,
)
permissions = st.fixed_dictionaries(
    {
        "view": st.booleans(),
        "store": st.booleans(),
        "second_opinion": st.booleans(),
        "teaching": st.booleans(),
        "research": st.booleans(),
    }
)


@settings(max_examples=600, deadline=None)
@given(
    conf=st.sampled_from(["N", "R", "V", None]),
    codes=label_sets,
    perms=st.one_of(st.none(), permissions),
    status=st.sampled_from(["active", "inactive"]),
    purpose=st.sampled_from(["TREAT", "COC", "TRAIN", "HRESCH", "FAMRQT", "HLEGAL"]),
    clearance=st.sampled_from(["N", "R", "V"]),
)
def test_nothing_is_released_that_labels_or_consent_forbid(
    conf, codes, perms, status, purpose, clearance
):
    role = {"FAMRQT": "family", "HLEGAL": "legal", "TRAIN": "teacher", "HRESCH": "researcher"}.get(
        purpose, "clinician"
    )
    consents = [] if perms is None else [consent(status, **perms)]
    rec = ImageRecord(media(conf, *codes), consents)
    d = decide_one(
        rec,
        req(
            purpose,
            role=role,
            clearance=clearance,
            requester="RelatedPerson/x" if role == "family" else "Practitioner/x",
        ),
    )
    if d.verdict is not Verdict.RELEASE:
        assert d.reasons
        return
    # released: every rule that could forbid it must be satisfied
    effective = LEVEL.get(conf or "V", 5)
    assert effective <= LEVEL[clearance], "R or V released without the clearance"
    assert purpose not in ("TRAIN", "HRESCH"), "identifiable image released for secondary use"
    assert not {x for _, x in codes} & {"HUAPRV"}, "released without the required approval"
    if purpose == "FAMRQT":
        assert "NOPAT" not in {x for _, x in codes}
        assert effective < 4
    if DEVAST not in codes:
        assert perms is not None and status == "active", "released without an active consent"
        if purpose in ("TREAT", "COC"):
            key = {"TREAT": perms["view"] and perms["store"], "COC": perms["second_opinion"]}
            assert key[purpose], "released for a purpose the consent refuses"


@settings(max_examples=200, deadline=None)
@given(
    conf=st.sampled_from(["R", "V"]),
    clearance=st.sampled_from(["N", "R"]),
    purpose=st.sampled_from(["TREAT", "COC", "HLEGAL"]),
)
def test_restricted_never_released_below_clearance(conf, clearance, purpose):
    if LEVEL[conf] <= LEVEL[clearance]:
        return
    rec = record(conf, consents=[consent(view=True, store=True, second_opinion=True)])
    role = "legal" if purpose == "HLEGAL" else "clinician"
    assert verdict(rec, req(purpose, role=role, clearance=clearance)) is Verdict.WITHHOLD


# ------------------------------------------------------------------------------- retention

ENGLAND = RetentionSchedule.load()


def test_child_images_kept_until_25th_birthday():
    until, why = earliest_destruction(
        ENGLAND, "hospital", birth_date=date(2020, 5, 1), last_treatment=date(2026, 11, 20)
    )
    assert until == date(2045, 5, 1) and "25th birthday" in why


def test_seventeen_at_end_of_treatment_kept_until_26th():
    until, _ = earliest_destruction(
        ENGLAND, "hospital", birth_date=date(2009, 1, 1), last_treatment=date(2026, 6, 1)
    )
    assert until == date(2035, 1, 1)


def test_adult_hospital_record_eight_years():
    until, _ = earliest_destruction(
        ENGLAND, "hospital", birth_date=date(1970, 1, 1), last_treatment=date(2010, 3, 4)
    )
    assert until == date(2018, 3, 4)


def test_gp_record_of_living_patient_is_kept():
    until, why = earliest_destruction(
        ENGLAND, "gp", birth_date=date(1970, 1, 1), last_treatment=date(2000, 1, 1)
    )
    assert until is None and "alive" in why
    until, _ = earliest_destruction(
        ENGLAND,
        "gp",
        birth_date=date(1930, 1, 1),
        last_treatment=date(2000, 1, 1),
        deceased=date(2015, 2, 1),
    )
    assert until == date(2025, 2, 1)


def test_unknown_record_type_is_refused():
    with pytest.raises(ActionRefused, match="maternity"):
        earliest_destruction(
            ENGLAND, "dental", birth_date=date(1970, 1, 1), last_treatment=date(2000, 1, 1)
        )
