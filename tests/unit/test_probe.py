"""From a probe report to the strategies, the risks and the cache (the probing itself runs
against the real servers in tests/integration/test_server_probe.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fhir_images import IncompatibleServer, InvalidSetting, Settings
from fhir_images.fhir.probe import ProbeCache, ServerReport, profile_from_report
from fhir_images.fhir.servers import JsonPatchLabels, MetaOperations, ReplaceByUpdate
from fhir_images.fhir.subscriptions import NoSubscriptions, RestHook, TopicBased

SAFE = ServerReport(
    base_url="http://fhir.test/",
    software="Some FHIR",
    software_version="1.0",
    fhir_version="4.0.1",
    probed_at="2026-11-25T10:00:00+00:00",
    create_and_read=True,
    labels_kept_on_create=True,
    meta_operations=False,
    put_labels="replace",
    json_patch_labels=True,
    transaction=True,
    conditional_create=True,
    security_search=True,
    subscriptions=("topic-based",),
    audit_event_create=False,
    total_by_default=False,
)
CAPS = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "software": {"name": "Some FHIR", "version": "1.0"},
}


def test_strategies_follow_what_the_server_did():
    p = profile_from_report(SAFE)
    assert isinstance(p.labels, JsonPatchLabels) and isinstance(p.subscriptions, TopicBased)
    assert p.binary_write.inline and p.binary_read.operation is None
    assert not p.audit_on_server and p.search_total == {"_total": "accurate"}
    meta = profile_from_report(
        replace(
            SAFE,
            meta_operations=True,
            put_labels="merge",
            put_replace_header=True,
            binary_operations=True,
            subscriptions=("rest-hook",),
            audit_event_create=True,
        )
    )
    assert isinstance(meta.labels, MetaOperations) and meta.labels.replace_header
    assert meta.binary_write.operation and meta.binary_read.operation
    assert isinstance(meta.subscriptions, RestHook) and meta.audit_on_server
    assert not meta.binary_read.json_only
    # a Binary read only as JSON (as HFS answers): labels and bytes checked in one read
    json_only = profile_from_report(replace(SAFE, binary_raw_read=False, binary_json_read=True))
    assert json_only.binary_read.json_only
    for unsure in (None, True):  # raw reads work, or it is not known: not assumed
        raw = profile_from_report(replace(SAFE, binary_raw_read=unsure, binary_json_read=True))
        assert not raw.binary_read.json_only
    put = profile_from_report(replace(SAFE, json_patch_labels=False, subscriptions=()))
    assert isinstance(put.labels, ReplaceByUpdate)
    assert isinstance(put.subscriptions, NoSubscriptions)


@pytest.mark.parametrize(
    "change",
    [
        {"labels_kept_on_create": False},
        {"labels_kept_on_create": None},
        {"json_patch_labels": False, "put_labels": "merge"},
        {"json_patch_labels": None, "put_labels": "unknown"},
    ],
)
def test_no_way_to_set_labels_means_nothing_is_stored(change):
    report = replace(SAFE, **change)
    with pytest.raises(IncompatibleServer, match="labels"):
        profile_from_report(report)
    assert "labels-unsupported" in [n for n, _ in report.risks()]


@pytest.mark.parametrize(
    "change, risk",
    [
        ({"security_search": False}, "no-security-search"),
        ({"security_search": None}, "no-security-search"),
        ({"transaction": False}, "no-atomic-transactions"),
        ({"conditional_create": None}, "no-atomic-transactions"),
    ],
)
def test_risks_fail_closed_on_what_was_not_found_out(change, risk):
    assert [n for n, _ in replace(SAFE, **change).risks()] == [risk]
    assert SAFE.risks() == []


def test_only_the_security_search_risk_can_be_accepted():
    assert Settings.from_env({"FHIR_IMAGES_ACCEPT_RISK": "no-security-search"}).accept_risks == {
        "no-security-search"
    }
    for other in ("labels-unsupported", "no-atomic-transactions", "everything"):
        with pytest.raises(InvalidSetting, match="cannot be accepted"):
            Settings.from_env({"FHIR_IMAGES_ACCEPT_RISK": other})


def test_the_cache_keeps_a_report_while_the_server_is_the_same(tmp_path):
    cache = ProbeCache(tmp_path / "cache")
    cache.put(SAFE)
    [file] = (tmp_path / "cache").iterdir()
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    assert cache.get(SAFE.base_url, CAPS) == SAFE
    upgraded = {**CAPS, "software": {"name": "Some FHIR", "version": "1.1"}}
    assert cache.get(SAFE.base_url, upgraded) is None
    assert cache.get("http://other.test/", CAPS) is None
    data = json.loads(file.read_text())
    data["schema"] = "an older set of checks"
    file.write_text(json.dumps(data))
    assert cache.get(SAFE.base_url, CAPS) is None
    file.write_text("not json")
    assert cache.get(SAFE.base_url, CAPS) is None


def test_a_check_that_meets_one_server_error_is_asked_again(monkeypatch):
    """A busy server's one-off error must not become a lasting 'labels do not work' in a
    report that is kept; an error that stays is written down."""
    from fhir_images._exceptions import VersionConflict
    from fhir_images.fhir import probe as probe_module

    monkeypatch.setattr(probe_module.time, "sleep", lambda s: None)
    run = probe_module._Run.__new__(probe_module._Run)
    run.notes = []
    answers = iter([VersionConflict("busy"), "kept"])

    def once_busy():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert run.check("labels on create", once_busy) == "kept" and run.notes == []

    def always_busy():
        raise VersionConflict("busy")

    assert run.check("labels on create", always_busy) is None
    assert run.notes and run.notes[0].startswith("labels on create")
