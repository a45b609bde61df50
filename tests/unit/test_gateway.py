"""The gateway's pure parts: scopes, request screening (what it lets through), and the merged
AuditEvent of a release."""

from __future__ import annotations

import pytest

from fhir_images import _codes as c
from fhir_images._gateway import Refused, Scope, screen
from fhir_images._gateway.screen import Screen
from fhir_images._gateway.service import _merged, _set_labels

SCREEN = Screen(frozenset({"Patient", "Media", "Binary", "Consent", "Observation"}), "Media")


@pytest.mark.parametrize(
    "text,rtype,letters",
    [
        ("user/Media.rs", "Media", "rs"),
        ("patient/*.cruds", "*", "cruds"),
        ("system/Observation.r", "Observation", "r"),
        ("user/*.read", "*", "rs"),
        ("user/Media.write", "Media", "cud"),
        ("user/*.*", "*", "cruds"),
    ],
)
def test_smart_scopes_v1_and_v2(text: str, rtype: str, letters: str) -> None:
    scope = Scope.parse(text)
    assert scope is not None
    assert scope.resource_type == rtype and scope.permissions == frozenset(letters)


@pytest.mark.parametrize(
    "text", ["user/Media.rs?category=x", "user/Media.sr", "openid", "user/Media.", "admin/*.*"]
)
def test_scopes_not_understood_grant_nothing(text: str) -> None:
    assert Scope.parse(text) is None


@pytest.mark.parametrize(
    "method,path,query,interaction",
    [
        ("GET", b"/Media", b"subject=Patient/1&_count=10&_include=Media:subject", "search"),
        ("GET", b"/Media", b"_security=http://x|N&_sort=-created", "search"),
        ("GET", b"/Observation", b"subject:Patient.name=smith", "search"),
        ("GET", b"/Observation", b"patient.name=smith&_summary=true", "search"),
        ("GET", b"/Patient", b"_revinclude=Media:subject", "search"),
        ("GET", b"/Media/m-1", b"", "read"),
        ("GET", b"/Media/m-1/_history/2", b"", "vread"),
        ("GET", b"/Media/_history", b"_since=2026-01-01", "history-type"),
        ("GET", b"/", b"_getpages=abc&_getpagesoffset=50&_count=50", "page"),
        ("GET", b"/Patient", b"_count=1&_cursor=eyJ2", "search"),
        ("GET", b"/Media/m-1/$binary-access-read", b"path=Media.content", "binary-access-read"),
        ("PUT", b"/Media/m-1", b"", "update"),
        ("DELETE", b"/Observation/o-1", b"", "delete"),
        ("POST", b"/", b"", "transaction"),
        ("GET", b"/metadata", b"", "metadata"),
    ],
)
def test_ordinary_requests_pass_the_screen(
    method: str, path: bytes, query: bytes, interaction: str
) -> None:
    assert screen(method, path, query, SCREEN).interaction == interaction


def test_images_in_the_answer_drop_total_and_rebuild_the_path() -> None:
    route = screen("GET", b"/Patient", b"_revinclude=Media:subject&_total=accurate", SCREEN)
    assert route.involves_images and ("_total", "accurate") not in route.params
    assert screen("GET", b"/Media/m-1/_history/2", b"", SCREEN).path == "Media/m-1/_history/2"
    with pytest.raises(Refused):
        screen("GET", b"/Media/m-1/_history/2/..", b"", SCREEN)


def test_one_audit_names_every_image_and_carries_the_highest_confidentiality() -> None:
    def event(ref: str, level: str) -> dict:
        return {
            "resourceType": "AuditEvent",
            "meta": {"security": [{"system": c.V3_CONFIDENTIALITY, "code": level}]},
            "entity": [{"what": {"reference": "Patient/p"}}, {"what": {"reference": ref}}],
        }

    merged = _merged([event("Media/1", "N"), event("Media/2", "R")])
    assert [e["what"]["reference"] for e in merged["entity"]] == ["Patient/p", "Media/1", "Media/2"]
    assert merged["meta"]["security"] == [{"system": c.V3_CONFIDENTIALITY, "code": "R"}]


def test_labels_on_a_write_are_only_raised() -> None:
    resource: dict = {"resourceType": "Media", "meta": {}}
    sent = [{"system": c.V3_CONFIDENTIALITY, "code": "V"}, {"system": "x", "code": "mine"}]
    wanted = [{"system": c.V3_CONFIDENTIALITY, "code": "N"}, {"system": "y", "code": "CPLYCD"}]
    _set_labels(resource, sent, wanted)
    keys = {(x["system"], x["code"]) for x in resource["meta"]["security"]}
    assert keys == {(c.V3_CONFIDENTIALITY, "V"), ("x", "mine"), ("y", "CPLYCD")}
