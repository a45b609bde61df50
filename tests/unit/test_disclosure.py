from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_images import (
    ActionRefused,
    DisclosureRequest,
    ImageRecord,
    InvalidContext,
    RetentionSchedule,
    Verdict,
    decide_disclosure,
    earliest_destruction,
)
from fhir_images import _codes as c
from fhir_images._context import Permissions
from fhir_images.fhir import common
from fhir_images.fhir.r4 import read
from fhir_images.fhir.r4.mapping import consent_provision
from fhir_images.fhir.views import ApprovalView as Approval
from fhir_images.policy import decide_one, high_water_mark, releasable_labels

CONF = c.V3_CONFIDENTIALITY


def _security(conf, codes):
    security = [{"system": CONF, "code": conf}] if conf else []
    return security + [{"system": s, "code": k} for s, k in codes]


def media(
    conf: str | None = "N", *codes: tuple[str, str], subject="Patient/p1", mid="1", kind=None
):
    m = {
        "resourceType": "Media",
        "id": mid,
        "subject": {"reference": subject},
        "meta": {"security": _security(conf, codes)},
        "content": {"url": f"Binary/b{mid}"},
    }
    if kind:
        m["modality"] = {"coding": [{"system": c.LOCAL_IMAGE_KIND, "code": kind}]}
    return m


def binary(conf: str | None = "N", *codes, context="Media/1"):
    b = {"resourceType": "Binary", "id": "b1", "meta": {"security": _security(conf, codes)}}
    if context is not None:
        b["securityContext"] = {"reference": context}
    return b


def consent(status="active", **perms):
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": status,
        "provision": consent_provision(Permissions(**perms), "Media/1", NOW),
    }


def record(conf="N", *codes, consents=None, binary_labels=None, **kw):
    m = media(conf, *codes, **kw)
    bconf, *bcodes = binary_labels if binary_labels is not None else (conf, *codes)
    return ImageRecord(
        read.image(m),
        tuple(
            read.consent(x)
            for x in ([consent(view=True, store=True)] if consents is None else consents)
        ),
        binary=common.binary(binary(bconf, *bcodes, context=f"Media/{m['id']}")),
    )


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def approval(**kw):
    base = dict(
        ref="Task/a1",
        status="accepted",
        media="Media/1",
        purpose="TREAT",
        requester="Practitioner/gp1",
        recipient="Practitioner/gp1",
        approver="Practitioner/lead",
        approved_at=NOW - timedelta(hours=1),
        valid_until=NOW + timedelta(days=1),
    )
    return Approval(**{**base, **kw})


def req(purpose="TREAT", role="clinician", clearance="N", requester="Practitioner/gp1", **kw):
    return DisclosureRequest(
        purpose=purpose, role=role, clearance=clearance, requester=requester, **kw
    )


DEVAST = (c.V3_OBSERVATION_VALUE, "DEVAST")
A = c.V3_ACT_CODE


def verdict(rec, request) -> Verdict:
    return decide_one(rec, request, now=NOW).verdict


def test_normal_image_released_for_care():
    d = decide_one(record(), req())
    assert d.verdict is Verdict.RELEASE
    assert any("provision for TREAT is a permit" in r for r in d.reasons)


# ------------------------------------------------------------ the bytes are what goes out


def test_the_binary_labels_count_too():
    """A Media labelled N whose Binary is V (another image's bytes, or a Media relabelled
    by hand) is decided on V."""
    rec = record("N", binary_labels=("V", (A, "HUAPRV")))
    d = decide_one(rec, req(clearance="N"))
    assert d.verdict is Verdict.WITHHOLD and d.confidentiality == "V"
    assert any("labelled V" in r for r in d.reasons)


def test_a_binary_without_a_confidentiality_label_counts_as_v():
    rec = record("N", binary_labels=(None,))
    d = decide_one(rec, req(clearance="R"))
    assert d.verdict is Verdict.WITHHOLD
    assert any("no confidentiality label on the Binary" in r for r in d.reasons)


def test_bytes_of_another_resource_are_withheld():
    rec = replace(record("N"), binary=common.binary(binary("N", context="Media/someone-else")))
    d = decide_one(rec, req(clearance="V"))
    assert d.verdict is Verdict.WITHHOLD
    assert any("belongs to another resource" in r for r in d.reasons)


def test_bytes_that_do_not_say_whose_they_are_are_withheld():
    rec = replace(record("N"), binary=common.binary(binary("N", context=None)))
    d = decide_one(rec, req(clearance="V"))
    assert d.verdict is Verdict.WITHHOLD
    assert any("no securityContext" in r for r in d.reasons)


def test_content_that_is_not_a_binary_here_is_withheld():
    rec = replace(record("N"), binary=None, binary_error="the Binary is not on the server")
    assert verdict(rec, req(clearance="V")) is Verdict.WITHHOLD
    rec = replace(record("N"), binary=None, binary_error=None)  # no content at all
    assert verdict(rec, req(clearance="V")) is Verdict.WITHHOLD


def test_release_labels_are_never_lower_than_the_binarys():
    rec = record("N", (A, "NORDSCLCDS"), binary_labels=("V", (A, "PHY"), (A, "HUAPRV")))
    codes = releasable_labels(rec).codes
    assert codes == {"V", "NORDSCLCDS", "HUAPRV"}, "highest conf, obligations of both, no PHY"


# ------------------------------------------------------------------- approvals, recorded


def test_approval_must_be_recorded_by_someone_else():
    rec = record("V", (A, "HUAPRV"))
    request = req(clearance="V")
    assert verdict(rec, request) is Verdict.APPROVE
    by_requester = replace(rec, approvals=(approval(approver="Practitioner/gp1"),))
    d = decide_one(by_requester, request, now=NOW)
    assert d.verdict is Verdict.APPROVE and any("someone else" in r for r in d.reasons)
    ok = replace(rec, approvals=(approval(),))
    d = decide_one(ok, request, now=NOW)
    assert d.verdict is Verdict.RELEASE and d.approval is not None
    assert d.approval.approver == "Practitioner/lead"
    assert any("approved by Practitioner/lead (Task/a1)" in r for r in d.reasons)


@pytest.mark.parametrize(
    "change, why",
    [
        ({"status": "requested"}, "is requested"),
        ({"status": "completed"}, "is completed"),
        ({"media": "Media/2"}, "another image"),
        ({"purpose": "COC"}, "another purpose"),
        ({"requester": "Practitioner/other"}, "another requester"),
        ({"recipient": "Organization/elsewhere"}, "another requester or recipient"),
        ({"approver": "Patient/p1"}, "clinician"),
        ({"approver": None}, "clinician"),
        ({"valid_until": NOW - timedelta(minutes=1)}, "expired"),
        ({"approved_at": NOW + timedelta(minutes=1)}, "in the past"),
        ({"approved_at": None}, "in the past"),
    ],
)
def test_an_approval_covers_only_what_it_names(change, why):
    rec = replace(record("V", (A, "HUAPRV")), approvals=(approval(**change),))
    d = decide_one(rec, req(clearance="V"), now=NOW)
    assert d.verdict is Verdict.APPROVE
    assert any(why in r for r in d.reasons), d.reasons


def test_approval_does_not_lift_a_withhold():
    rec = replace(record("V", (A, "HUAPRV")), approvals=(approval(),))
    assert verdict(rec, req(clearance="N")) is Verdict.WITHHOLD


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
    assert any("provision for COC is a deny" in r for r in d.reasons)


def test_consents_that_disagree_withhold():
    both = [
        consent(view=True, store=True, second_opinion=True),
        {**consent(view=True, store=True, second_opinion=False), "id": "c2"},
    ]
    d = decide_one(record(consents=both), req("COC"))
    assert d.verdict is Verdict.WITHHOLD
    assert any("Consent/c2" in r for r in d.reasons)


def test_no_consent_withholds_unless_implicit():
    assert verdict(record(consents=[]), req()) is Verdict.WITHHOLD
    assert verdict(record("N", DEVAST, consents=[], kind="ultrasound"), req()) is Verdict.RELEASE
    # the kind alone, or the image's label without its bytes', is not enough
    assert verdict(record("N", DEVAST, consents=[]), req()) is Verdict.WITHHOLD
    image_unlabelled = record("N", consents=[], kind="ultrasound", binary_labels=("N", DEVAST))
    assert verdict(image_unlabelled, req()) is Verdict.WITHHOLD
    bytes_unlabelled = record("N", DEVAST, consents=[], kind="ultrasound", binary_labels=("N",))
    assert verdict(bytes_unlabelled, req()) is Verdict.WITHHOLD


def test_withdrawn_consent_withholds():
    d = decide_one(record(consents=[consent("inactive", view=True, store=True)]), req())
    assert d.verdict is Verdict.WITHHOLD and "inactive" in d.reasons[0]


def test_unreadable_consent_withholds():
    rec = replace(record(consents=[]), consent_error="ServerUnavailable")
    assert verdict(rec, req()) is Verdict.WITHHOLD


def test_identifiable_images_never_go_for_teaching_or_research():
    rec = record(consents=[consent(view=True, store=True, teaching=True, research=True)])
    assert verdict(rec, req("TRAIN", role="teacher")) is Verdict.WITHHOLD
    assert verdict(rec, req("HRESCH", role="researcher")) is Verdict.WITHHOLD


def test_patient_gets_own_images_but_not_nopat_or_v_ones_without_approval():
    own = req("PATRQT", role="patient", requester="Patient/p1")
    assert verdict(record("R"), own) is Verdict.RELEASE  # their own copy: no clearance needed
    assert verdict(record("R", (A, "NOPAT")), own) is Verdict.APPROVE
    d = decide_one(record("V"), own, now=NOW)
    assert d.verdict is Verdict.APPROVE and any("PATRQT" in r for r in d.reasons)
    approved = replace(
        record("V", (A, "NOPAT")),
        approvals=(approval(purpose="PATRQT", requester="Patient/p1", recipient="Patient/p1"),),
    )
    assert verdict(approved, own) is Verdict.RELEASE
    assert verdict(record(subject="Patient/other"), own) is Verdict.WITHHOLD


def test_patient_copy_follows_the_binary_not_the_media():
    """A Media of the requester that points at another child's V bytes is not their copy."""
    own = req("PATRQT", role="patient", requester="Patient/p1")
    rec = replace(record("N"), binary=common.binary(binary("V", context="Media/victim")))
    d = decide_one(rec, own, now=NOW)
    assert d.verdict is Verdict.WITHHOLD
    assert any("another resource" in r for r in d.reasons)


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
    with pytest.raises(InvalidContext, match="requester: must be a relative reference"):
        req(requester="gp1")
    with pytest.raises(InvalidContext, match="recipient"):
        req(recipient="Organization/..")
    with pytest.raises(InvalidContext):
        req("PATRQT", role="clinician")
    with pytest.raises(InvalidContext):
        req("FAMRQT", role="clinician")
    with pytest.raises(InvalidContext) as info:
        req("SHOPPING-for-Jane-Doe")
    assert "Jane" not in str(info.value), "the value is never echoed"


def test_released_labels_drop_sensitivity_codes():
    rec = record("V", (A, "PHY"), (c.LOCAL_SENSITIVITY, "intimate"), (A, "NORDSCLCDS"), (A, "SDV"))
    kept = releasable_labels(rec).codes
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
    binary_conf=st.sampled_from(["N", "R", "V", None]),
    binary_codes=label_sets,
    context=st.sampled_from(["Media/1", "Media/2", None]),
    perms=st.one_of(st.none(), permissions),
    status=st.sampled_from(["active", "inactive"]),
    purpose=st.sampled_from(["TREAT", "COC", "TRAIN", "HRESCH", "FAMRQT", "HLEGAL", "PATRQT"]),
    clearance=st.sampled_from(["N", "R", "V"]),
)
def test_nothing_is_released_that_labels_or_consent_forbid(
    conf, codes, binary_conf, binary_codes, context, perms, status, purpose, clearance
):
    role = {
        "FAMRQT": "family",
        "HLEGAL": "legal",
        "TRAIN": "teacher",
        "HRESCH": "researcher",
        "PATRQT": "patient",
    }.get(purpose, "clinician")
    consents = [] if perms is None else [consent(status, **perms)]
    kind = "ultrasound" if DEVAST in codes and DEVAST in binary_codes else None
    rec = ImageRecord(
        read.image(media(conf, *codes, kind=kind)),
        tuple(read.consent(x) for x in consents),
        binary=common.binary(binary(binary_conf, *binary_codes, context=context)),
    )
    requester = {"family": "RelatedPerson/x", "patient": "Patient/p1"}.get(role, "Practitioner/x")
    d = decide_one(rec, req(purpose, role=role, clearance=clearance, requester=requester), now=NOW)
    if d.verdict is not Verdict.RELEASE:
        assert d.reasons
        return
    # released: every rule that could forbid it must be satisfied
    all_codes = {x for _, x in codes} | {x for _, x in binary_codes}
    effective = max(LEVEL.get(conf or "V", 5), LEVEL.get(binary_conf or "V", 5))
    assert context == "Media/1", "bytes released that are not this image's"
    if purpose == "PATRQT":
        assert effective < 5, "a V image given to the patient without review"
    else:
        assert effective <= LEVEL[clearance], "R or V released without the clearance"
    assert purpose not in ("TRAIN", "HRESCH"), "identifiable image released for secondary use"
    assert "HUAPRV" not in all_codes, "released without the required approval"
    if purpose in ("FAMRQT", "PATRQT"):
        assert "NOPAT" not in all_codes
    if purpose == "FAMRQT":
        assert effective < 4
    if kind is None:
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
