from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_images import ConsentState, InvalidContext, Outcome, PolicyNotFound, decide
from fhir_images._codes import V3_CONFIDENTIALITY, Confidentiality

from ..factories import child_context, make_consent, make_context, parent_consent


def codes(decision) -> set[str]:
    return {label.code for label in decision.labels.all()}


def rules(decision, outcome: Outcome | None = None) -> set[str]:
    return {r.rule for r in decision.reasons if outcome is None or r.outcome is outcome}


# ------------------------------------------------------------------ the required situations


def test_ultrasound_without_consent_is_stored_with_implicit_consent():
    d = decide(
        make_context(
            kind="ultrasound", made_by="clinician", operator="Practitioner/s1", remote=False
        )
    )
    assert d.outcome is Outcome.STORE
    assert d.consent is ConsentState.IMPLICIT
    assert "G3" in rules(d)
    assert d.labels.confidentiality is Confidentiality.N
    assert codes(d) == {"N", "DEVAST"}


def test_adult_remote_photo_with_consent_is_stored():
    d = decide(make_context(), make_consent())
    assert d.outcome is Outcome.STORE
    assert d.consent is ConsentState.RECORDED
    assert "G9" in rules(d)
    assert codes(d) == {"N", "CPLYCD", "NORDSCLCDS", "PATAST"}


def test_parent_unsolicited_intimate_without_confirmed_consent_is_held():
    d = decide(child_context())
    assert d.outcome is Outcome.HOLD
    assert "G6" in rules(d, Outcome.HOLD)


def test_parent_implied_consent_is_not_enough_for_unsolicited_intimate():
    d = decide(child_context(), parent_consent(method="implied", confirmed=False))
    assert d.outcome is Outcome.HOLD
    assert "G6" in rules(d, Outcome.HOLD)


def test_parent_consent_not_confirmed_after_unsolicited_photo_is_held():
    d = decide(child_context(), parent_consent(confirmed=False))
    assert d.outcome is Outcome.HOLD
    assert {r.code for r in d.blocking} == {"consent-unconfirmed-unsolicited"}


def test_confirmed_parental_consent_stores_very_restricted():
    d = decide(child_context(), parent_consent())
    assert d.outcome is Outcome.STORE
    assert d.labels.confidentiality is Confidentiality.V
    assert {"PHY", "intimate", "young-child", "HUAPRV", "NOREUSE", "NORDSCLCDS", "SDMAST"} <= codes(
        d
    )


def test_strict_policy_refuses_intimate_image_of_child():
    d = decide(child_context(), parent_consent(), policy="strict")
    assert d.outcome is Outcome.REFUSE
    assert "S1" in rules(d, Outcome.REFUSE)


def test_strict_policy_still_stores_adult_images():
    assert decide(make_context(), make_consent(), policy="strict").outcome is Outcome.STORE


def test_no_purpose_is_refused_with_what_to_record():
    d = decide(make_context(purpose="  "), make_consent())
    assert d.outcome is Outcome.REFUSE
    [reason] = [r for r in d.reasons if r.outcome is Outcome.REFUSE]
    assert reason.rule == "G8" and "purpose" in reason.text


# ------------------------------------------------------------------------- consent rules


def test_missing_consent_for_a_photo_is_held():
    d = decide(make_context())
    assert d.outcome is Outcome.HOLD
    assert d.consent is ConsentState.MISSING
    assert "G4" in rules(d, Outcome.HOLD)


def test_clinician_photo_without_consent_cites_g1():
    d = decide(make_context(made_by="clinician", operator="Practitioner/x", remote=False))
    assert rules(d, Outcome.HOLD) == {"G1"}


def test_consent_refusing_storage_is_refused():
    d = decide(make_context(), make_consent(permissions={"view": True, "store": False}))
    assert d.outcome is Outcome.REFUSE and "G1" in rules(d, Outcome.REFUSE)


def test_consent_refusing_storage_of_implicit_kind_is_refused():
    d = decide(
        make_context(kind="xray", made_by="clinician", operator="Practitioner/x"),
        make_consent(permissions={"view": True, "store": False}),
    )
    assert d.outcome is Outcome.REFUSE


@pytest.mark.parametrize("missing", ["why", "form", "secure_storage"])
def test_incomplete_explanation_is_held(missing):
    explained = {"why": True, "form": True, "secure_storage": True, missing: False}
    d = decide(make_context(), make_consent(explained=explained))
    assert d.outcome is Outcome.HOLD and "G1" in rules(d, Outcome.HOLD)


def test_secondary_use_without_explanation_is_held():
    d = decide(
        make_context(),
        make_consent(
            explained={"why": True, "form": True, "secure_storage": True, "secondary_uses": False},
            permissions={"view": True, "store": True, "teaching": True},
        ),
    )
    assert d.outcome is Outcome.HOLD and "G2" in rules(d, Outcome.HOLD)


def test_discussion_must_be_recorded():
    d = decide(make_context(), make_consent(discussion=None))
    assert d.outcome is Outcome.HOLD and "G8" in rules(d, Outcome.HOLD)


def test_implied_consent_for_intimate_adult_image_is_held():
    d = decide(make_context(intimate=True), make_consent(method="implied"))
    assert d.outcome is Outcome.HOLD


def test_implied_consent_for_adult_solicited_photo_is_enough():
    assert decide(make_context(), make_consent(method="implied")).outcome is Outcome.STORE


def test_no_parental_responsibility_is_held():
    d = decide(child_context(), parent_consent(parental_responsibility=False))
    assert d.outcome is Outcome.HOLD and "G5" in rules(d, Outcome.HOLD)
    assert "PACQAST" in codes(d)


@pytest.mark.parametrize("stated", [None, True])
def test_parent_whose_parental_responsibility_is_not_stated_is_held(stated):
    """A parent is not assumed to hold parental responsibility: without holder and basis the
    image is held, labelled as supplied by someone without it."""
    d = decide(child_context(), parent_consent(parental_responsibility=stated))
    assert d.outcome is Outcome.HOLD
    assert "parental-responsibility-not-stated" in {r.code for r in d.blocking}
    assert "G5" in rules(d, Outcome.HOLD)
    assert "PACQAST" in codes(d) and "SDMAST" not in codes(d)


def test_parent_with_stated_parental_responsibility_is_stored():
    consent = parent_consent(
        relationship="FTH",
        giver="RelatedPerson/dad1",
        parental_responsibility={"holder": "father", "basis": "registered_on_birth_certificate"},
    )
    d = decide(child_context(operator="RelatedPerson/dad1"), consent)
    assert d.outcome is Outcome.STORE, d.blocking
    assert "SDMAST" in codes(d)


def test_parental_responsibility_on_an_impossible_basis_is_bad_input():
    with pytest.raises(InvalidContext, match="parental_responsibility"):
        parent_consent(parental_responsibility={"holder": "mother", "basis": "care_order"})


def test_relative_without_parental_responsibility_is_held():
    d = decide(
        child_context(made_by="relative_or_carer", operator="RelatedPerson/gran"),
        make_consent(
            given_by="relative_or_carer", giver="RelatedPerson/gran", relationship="OTHER"
        ),
    )
    assert d.outcome is Outcome.HOLD and "G5" in rules(d, Outcome.HOLD)


def test_under_16_needs_gillick_assessment():
    ctx = make_context(
        patient="Patient/t1",
        operator="Patient/t1",
        birth_date="2012-05-01",
        best_interests="Helps follow-up.",
    )
    assert decide(ctx, make_consent()).outcome is Outcome.HOLD
    assert decide(ctx, make_consent(gillick_competent=True)).outcome is Outcome.STORE


def test_16_and_17_year_olds_consent_for_themselves():
    ctx = make_context(
        patient="Patient/t2",
        operator="Patient/t2",
        birth_date="2009-01-01",
        best_interests="Helps follow-up.",
    )
    d = decide(ctx, make_consent())
    assert d.outcome is Outcome.STORE
    assert {"R", "PHY", "ADOL"} <= codes(d)


def test_adult_consent_by_someone_else_is_held():
    d = decide(make_context(), parent_consent())
    assert d.outcome is Outcome.HOLD and "G5" in rules(d, Outcome.HOLD)


def test_child_image_needs_best_interests_recorded():
    d = decide(child_context(best_interests=None), parent_consent())
    assert d.outcome is Outcome.HOLD and "G7" in rules(d, Outcome.HOLD)


def test_consent_giver_must_be_the_patient():
    with pytest.raises(InvalidContext, match="giver"):
        decide(make_context(), make_consent(giver="Patient/someone-else"))


# ------------------------------------------------------------------------------- labels


def test_unknown_intimacy_is_labelled_as_intimate():
    d = decide(make_context(intimate=None), make_consent())
    assert d.labels.confidentiality is Confidentiality.R
    assert {"PHY", "intimate", "MINEC"} <= codes(d)
    assert any(r.code == "intimacy-unknown" for r in d.reasons)


def test_intimate_adult_image_is_restricted():
    d = decide(make_context(intimate=True), make_consent())
    assert d.outcome is Outcome.STORE
    assert d.labels.confidentiality is Confidentiality.R
    assert {"PHY", "intimate", "MINEC", "PATAST"} <= codes(d)


def test_safeguarding_concern_is_very_restricted_and_hidden_from_family():
    d = decide(
        child_context(intimate=False, safeguarding_concern=True, routine_in_person=True),
        parent_consent(),
    )
    assert d.labels.confidentiality is Confidentiality.V
    assert {"SDV", "NOPAT", "HUAPRV"} <= codes(d)


def test_adult_safeguarding_uses_violence_code():
    d = decide(make_context(safeguarding_concern=True), make_consent())
    assert {"VIO", "NOPAT", "HUAPRV"} <= codes(d) and "SDV" not in codes(d)


def test_clinician_photo_of_child_is_restricted():
    d = decide(
        make_context(
            patient="Patient/c2",
            birth_date="2020-01-01",
            made_by="clinician",
            operator="Practitioner/x",
            remote=False,
            best_interests="Monitor healing.",
        ),
        parent_consent(),
    )
    assert d.labels.confidentiality is Confidentiality.R
    assert {"PHY", "young-child", "CLINAST"} <= codes(d)


def test_unknown_policy():
    with pytest.raises(PolicyNotFound, match="default"):
        decide(make_context(), make_consent(), policy="lenient")


# ------------------------------------------------------------------------------ properties

contexts = st.fixed_dictionaries(
    {
        "birth_date": st.sampled_from(
            ["2024-08-02", "2019-01-01", "2012-05-01", "2009-01-01", "1985-06-30"]
        ),
        "made_by": st.sampled_from(["clinician", "patient", "parent", "relative_or_carer"]),
        "kind": st.sampled_from(["photo", "video", "audio", "xray", "ultrasound", "endoscopy"]),
        "solicited": st.sampled_from([True, False, None]),
        "intimate": st.sampled_from([True, False, None]),
        "routine_in_person": st.sampled_from([True, False, None]),
        "safeguarding_concern": st.booleans(),
        "purpose": st.sampled_from(["Monitor the lesion.", "", None]),
        "best_interests": st.sampled_from(["In the child's interest.", None]),
    }
)
consents = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "given_by": st.sampled_from(["patient", "parent"]),
            "method": st.sampled_from(["verbal", "written", "implied"]),
            "confirmed": st.booleans(),
            "parental_responsibility": st.booleans(),
            "gillick_competent": st.sampled_from([True, False, None]),
            "permissions": st.fixed_dictionaries(
                {"view": st.booleans(), "store": st.booleans(), "teaching": st.booleans()}
            ),
        }
    ),
)


def _build(ctx_data, consent_data):
    ctx_data = {**ctx_data, "operator": None}
    ctx = make_context(**ctx_data)
    if consent_data is None:
        return ctx, None
    if consent_data["given_by"] == "parent":
        consent = parent_consent(**{k: v for k, v in consent_data.items() if k != "given_by"})
    else:
        consent = make_consent(
            **{
                k: v
                for k, v in consent_data.items()
                if k not in ("given_by", "parental_responsibility")
            }
        )
    return ctx, consent


@settings(max_examples=400, deadline=None)
@given(contexts, consents, st.sampled_from(["default", "strict"]))
def test_invariants(ctx_data, consent_data, policy):
    ctx, consent = _build(ctx_data, consent_data)
    d = decide(ctx, consent, policy=policy)
    confidentiality = [lab for lab in d.labels.all() if lab.system == V3_CONFIDENTIALITY]
    assert len(confidentiality) == 1, "exactly one confidentiality label"
    assert len(d.labels.provenance) == 1
    if d.outcome is Outcome.STORE:
        assert (ctx.purpose or "").strip(), "never stored without a purpose (G8)"
        if ctx.kind not in ("xray", "ultrasound", "endoscopy"):
            assert consent is not None, "never stored without consent unless implicit (G3)"
            assert consent.permissions.store and consent.permissions.view
        if consent is not None and ctx.age_years() < 18 and consent.given_by == "parent":
            assert consent.parental_responsibility, "a child's consent needs parental resp. (G5)"
    if ctx.intimate is not False and ctx.kind in ("photo", "video", "audio"):
        assert d.labels.confidentiality >= Confidentiality.R, "intimate (or unknown) is restricted"
        if ctx.age_years() < 18:
            assert d.labels.confidentiality is Confidentiality.V
            if policy == "strict":
                assert d.outcome is Outcome.REFUSE
    if ctx.safeguarding_concern:
        assert d.labels.confidentiality is Confidentiality.V
        assert "NOPAT" in codes(d)
    if d.outcome is not Outcome.STORE:
        assert d.blocking, "a hold or refusal always says why"
