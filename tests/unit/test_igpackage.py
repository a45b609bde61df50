"""The FHIR NPM package built from profiles/: its layout, manifest, indexes, ImplementationGuide,
examples, snapshots and bytes, and the command that builds it."""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner

from fhir_images import FhirClient
from fhir_images import _igpackage as ig
from fhir_images._exceptions import BadInput, ServerError
from fhir_images.cli import main

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "fhir_images" / "profiles"
EXAMPLES = ROOT / "examples" / "resources"
BASE = "http://fhir.test/fhir"
BASE_URL_OF = "https://fhir-images.org/fhir"  # the canonical base

Resource = dict[str, Any]


def files_of(data: bytes) -> dict[str, Resource]:
    return {path: json.loads(body) for path, body in ig.read_package(data).items()}


def definitions(version: str) -> list[Path]:
    folder = PROFILES / "r5" if version == "R5" else PROFILES
    return sorted(folder.glob("StructureDefinition-*.json"))


def terminology() -> list[Path]:
    return sorted([*PROFILES.glob("CodeSystem-*.json"), *PROFILES.glob("ValueSet-*.json")])


@pytest.fixture(scope="module", params=["R4", "R5"])
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def built(version: str) -> ig.IgPackage:
    return ig.build_package(version, examples=EXAMPLES)


@pytest.fixture(scope="module")
def files(built: ig.IgPackage) -> dict[str, Resource]:
    return files_of(built.tgz())


# ----------------------------------------------------------------------------- layout


def test_every_entry_is_a_file_under_package(built: ig.IgPackage) -> None:
    with tarfile.open(fileobj=io.BytesIO(built.tgz()), mode="r:gz") as tar:
        members = tar.getmembers()
    assert members and all(m.isfile() for m in members)
    assert all(m.name.startswith("package/") for m in members)
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {m.mtime for m in members} == {ig.ENTRY_MTIME}
    assert {(m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, "", "", 0o644)}


def test_the_package_json(built: ig.IgPackage, files: dict[str, Resource], version: str) -> None:
    manifest = files["package/package.json"]
    number, core = ig.RELEASES[version]
    assert manifest["name"] == f"fhir-images.fhir.{version.lower()}" == built.name
    assert manifest["version"] == "0.1.0" == built.version  # the profiles' version
    assert manifest["fhirVersions"] == [number]
    assert manifest["dependencies"] == {core: number}
    assert manifest["canonical"] == "https://fhir-images.org/fhir"
    assert manifest["url"].startswith("https://fhir-images.org")
    assert manifest["type"] == "fhir.ig"
    assert manifest["license"] == "Apache-2.0"
    assert manifest["description"]


def test_the_conformance_resources_of_the_version_and_no_others(
    files: dict[str, Resource], version: str
) -> None:
    number = ig.RELEASES[version][0]
    top = {p: r for p, r in files.items() if p.count("/") == 1 and not p.endswith("/.index.json")}
    expected = {
        f"package/{p.name}": json.loads(p.read_text())
        for p in [*terminology(), *definitions(version)]
    }
    conformance = {p: r for p, r in top.items() if r.get("resourceType") != "ImplementationGuide"}
    del conformance["package/package.json"]
    assert set(conformance) == set(expected)
    for path, resource in conformance.items():
        assert resource == expected[path], f"{path} differs from its file"
    sds = [r for r in conformance.values() if r["resourceType"] == "StructureDefinition"]
    assert sds and {sd["fhirVersion"] for sd in sds} == {number}


def test_the_index_lists_every_file_with_its_fields(files: dict[str, Resource]) -> None:
    for folder in ("package/", "package/example/"):
        index = files[f"{folder}.index.json"]
        assert index["index-version"] == 1
        here = {
            p.removeprefix(folder): r
            for p, r in files.items()
            if p.startswith(folder)
            and "/" not in p.removeprefix(folder)
            and not p.endswith(("/.index.json", "/package.json"))
        }
        listed = {e["filename"]: e for e in index["files"]}
        assert set(listed) == set(here)
        for name, entry in listed.items():
            resource = here[name]
            assert entry["resourceType"] == resource["resourceType"]
            assert entry["id"] == resource["id"]
            keys = {"filename", "resourceType", "id"}
            if resource["resourceType"] in ig._CANONICAL_TYPES:
                keys |= {"url", "version"}
            if resource["resourceType"] == "StructureDefinition":
                keys |= {"kind", "type"}
            assert set(entry) == keys, name
            for key in keys - {"filename"}:
                assert entry[key] == resource[key], (name, key)
            assert name == f"{resource['resourceType']}-{resource['id']}.json"


def test_the_implementation_guide_lists_every_resource(
    files: dict[str, Resource], version: str
) -> None:
    guide = files["package/ImplementationGuide-fhir-images.json"]
    assert guide["url"] == "https://fhir-images.org/fhir/ImplementationGuide/fhir-images"
    assert guide["packageId"] == f"fhir-images.fhir.{version.lower()}"
    assert guide["version"] == "0.1.0"
    assert guide["fhirVersion"] == [ig.RELEASES[version][0]]
    listed = {e["reference"]["reference"]: e for e in guide["definition"]["resource"]}
    conformance = {
        f"{r['resourceType']}/{r['id']}"
        for p, r in files.items()
        if p.count("/") == 1 and r.get("resourceType") not in (None, "ImplementationGuide")
    }
    examples = {
        f"{r['resourceType']}/{r['id']}"
        for p, r in files.items()
        if p.startswith("package/example/") and "resourceType" in r
    }
    assert set(listed) == conformance | examples
    profiles = {r["url"] for r in files.values() if r.get("resourceType") == "StructureDefinition"}
    for ref, entry in listed.items():
        example = ref in examples
        if version == "R4":
            if example:
                assert entry["exampleCanonical"] in profiles, ref
            else:
                assert entry["exampleBoolean"] is False and "exampleCanonical" not in entry
        else:
            assert entry["isExample"] is example
            if example:
                assert set(entry["profile"]) <= profiles and entry["profile"], ref


# ---------------------------------------------------------------------------- examples


def test_every_example_is_in_the_package_as_a_resource(
    files: dict[str, Resource], version: str
) -> None:
    folder = EXAMPLES / "r5" if version == "R5" else EXAMPLES
    expected: list[Resource] = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        expected += [e["resource"] for e in data["entry"]] if "entry" in data else [data]
    examples = [
        r for p, r in files.items() if p.startswith("package/example/") and "resourceType" in r
    ]
    assert len(examples) == len(expected)
    assert sorted(r["resourceType"] for r in examples) == sorted(
        r["resourceType"] for r in expected
    )
    image = "DocumentReference" if version == "R5" else "Media"
    assert {"AuditEvent", "Binary", "Consent", image, "Provenance"} <= {
        r["resourceType"] for r in examples
    }
    # no reference is left pointing into a Bundle the example is no longer in
    assert "urn:uuid:" not in json.dumps(examples)


def test_references_inside_a_bundle_point_at_the_examples(files: dict[str, Resource]) -> None:
    examples = {
        f"{r['resourceType']}/{r['id']}": r
        for p, r in files.items()
        if p.startswith("package/example/") and "resourceType" in r
    }
    binaries = [r for r in examples.values() if r["resourceType"] == "Binary"]
    assert binaries
    for binary in binaries:
        assert binary["securityContext"]["reference"] in examples


def test_without_examples(version: str) -> None:
    package = ig.build_package(version)
    assert not package.examples
    assert not [p for p in package.files if p.startswith("package/example/")]
    guide = json.loads(package.files["package/ImplementationGuide-fhir-images.json"])
    assert all(
        not e.get("exampleBoolean") and not e.get("isExample") and "exampleCanonical" not in e
        for e in guide["definition"]["resource"]
    )


def test_an_example_without_an_id_gets_one_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "audit-thing.json").write_text((EXAMPLES / "audit-disclosure.json").read_text())
    [audit] = ig.example_resources(tmp_path)
    assert audit["id"] == "audit-thing"


# --------------------------------------------------------------------------- bytes


def test_rebuilds_are_byte_identical(version: str, tmp_path: Path) -> None:
    first = ig.build_package(version, examples=EXAMPLES).write(tmp_path / "a.tgz")
    second = ig.build_package(version, examples=EXAMPLES).write(tmp_path / "b.tgz")
    assert first.read_bytes() == second.read_bytes()
    assert gzip.decompress(first.read_bytes())  # a plain gzip stream, no name or time in it
    assert first.read_bytes()[4:8] == b"\0\0\0\0"


# -------------------------------------------------------------------------- snapshots


def _snapshot_server(
    rsps: responses.RequestsMock, fhir_version: str, extensions_there: bool = True
) -> list[str]:
    seen: list[str] = []
    rsps.get(f"{BASE}/metadata", json=_capabilities(fhir_version))
    rsps.get(
        f"{BASE}/StructureDefinition",
        json={
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "StructureDefinition"}}]
            if extensions_there
            else [],
        },
    )

    def snapshot(request: Any) -> tuple[int, dict[str, str], str]:
        params = json.loads(request.body)
        [param] = params["parameter"]
        assert param["name"] == "definition"
        sd = copy.deepcopy(param["resource"])
        seen.append(sd["id"])
        sd["snapshot"] = {"element": [{"id": sd["type"], "path": sd["type"]}]}
        sd["meta"] = {"lastUpdated": "2026-01-01T00:00:00Z"}
        return 200, {}, json.dumps(sd)

    rsps.add_callback(
        responses.POST,
        f"{BASE}/StructureDefinition/$snapshot",
        callback=snapshot,
        content_type="application/fhir+json",
    )
    return seen


@responses.activate
def test_snapshots_from_a_server(version: str) -> None:
    seen = _snapshot_server(responses.mock, ig.RELEASES[version][0])
    package = ig.build_package(version, snapshots=ig.server_snapshots(BASE))
    assert package.snapshots and not package.notes
    sds = [
        json.loads(body)
        for path, body in package.files.items()
        if path.startswith("package/StructureDefinition-")
    ]
    assert sds and all(sd["snapshot"]["element"] for sd in sds)
    assert all("meta" not in sd for sd in sds), "only the snapshot is taken from the server"
    extensions = {sd["id"] for sd in sds if sd["type"] == "Extension"}
    assert "remote-consultation" in extensions
    assert set(seen[: len(extensions)]) == extensions, "extensions first: profiles use them"
    assert sorted(seen) == sorted(sd["id"] for sd in sds)


@responses.activate
def test_a_server_without_the_extensions_is_noted() -> None:
    _snapshot_server(responses.mock, "4.0.1", extensions_there=False)
    package = ig.build_package("R4", snapshots=ig.server_snapshots(BASE))
    assert any("remote-consultation" in n and "generic" in n for n in package.notes)


def test_without_snapshots_it_says_so() -> None:
    package = ig.build_package("R4")
    assert not package.snapshots
    assert any("differential only" in n for n in package.notes)
    sds = [json.loads(b) for p, b in package.files.items() if "StructureDefinition-" in p]
    assert sds and not any("snapshot" in sd for sd in sds)


@responses.activate
def test_a_server_of_another_fhir_version_is_refused() -> None:
    _snapshot_server(responses.mock, "4.0.1")
    with pytest.raises(BadInput, match=r"FHIR 4\.0\.1 server"):
        ig.build_package("R5", snapshots=ig.server_snapshots(BASE))


@responses.activate
def test_a_server_without_snapshot_is_refused() -> None:
    responses.get(f"{BASE}/metadata", json=_capabilities("4.0.1", snapshot=False))
    with pytest.raises(BadInput, match=r"no \$snapshot operation"):
        ig.build_package("R4", snapshots=ig.server_snapshots(BASE))


@responses.activate
def test_a_failing_snapshot_is_an_error() -> None:
    responses.get(f"{BASE}/metadata", json=_capabilities("4.0.1"))
    responses.get(f"{BASE}/StructureDefinition", json={"resourceType": "Bundle"})
    responses.post(f"{BASE}/StructureDefinition/$snapshot", status=500, json={})
    with pytest.raises(ServerError, match="HTTP 500"):
        ig.build_package("R4", snapshots=ig.server_snapshots(BASE))


# ---------------------------------------------------------------------------- checks


def _profiles_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "profiles"
    (folder / "r5").mkdir(parents=True)
    for p in PROFILES.glob("*.json"):
        (folder / p.name).write_text(p.read_text())
    for p in (PROFILES / "r5").glob("*.json"):
        (folder / "r5" / p.name).write_text(p.read_text())
    return folder


def _edit(folder: Path, name: str, key: str, value: str) -> Path:
    path = folder / name
    resource = json.loads(path.read_text())
    resource[key] = value
    path.write_text(json.dumps(resource))
    return folder


def test_resources_of_different_versions_are_refused(tmp_path: Path) -> None:
    folder = _edit(_profiles_copy(tmp_path), "ValueSet-confidentiality.json", "version", "9.9.9")
    with pytest.raises(ig.PackageError, match="different versions"):
        ig.build_package("R4", profiles=folder)


def test_a_definition_of_the_other_fhir_version_is_refused(tmp_path: Path) -> None:
    folder = _profiles_copy(tmp_path)
    (folder / "StructureDefinition-clinical-image.json").write_text(
        (PROFILES / "r5" / "StructureDefinition-clinical-image.json").read_text()
    )
    with pytest.raises(ig.PackageError, match="does not belong in the R4 package"):
        ig.build_package("R4", profiles=folder)


def test_a_resource_off_its_canonical_url_is_refused(tmp_path: Path) -> None:
    folder = _edit(_profiles_copy(tmp_path), "CodeSystem-image-kind.json", "id", "other")
    with pytest.raises(ig.PackageError, match="not its canonical URL"):
        ig.build_package("R4", profiles=folder)


def test_an_unknown_fhir_version_is_bad_input() -> None:
    with pytest.raises(BadInput):
        ig.build_package("STU3")


def test_not_a_package_is_refused() -> None:
    with pytest.raises(ig.PackageError):
        ig.read_package(b"not a tar")


# ------------------------------------------------------------------------------- CLI


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_builds_the_package(tmp_path: Path) -> None:
    out = tmp_path / "r5.tgz"
    result = run("profiles", "build", "--fhir-version", "r5", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "differential only" in result.stderr
    assert "fhir-images.fhir.r5 0.1.0" in result.stderr
    files = files_of(out.read_bytes())
    assert files["package/package.json"]["fhirVersions"] == ["5.0.0"]
    assert any(p.startswith("package/example/") for p in files)  # a source checkout


def test_cli_default_name_and_no_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("profiles", "build", "--no-examples")
    assert result.exit_code == 0, result.output
    path = tmp_path / "fhir-images.fhir.r4-0.1.0.tgz"
    assert result.stdout.strip() == path.name
    assert not [p for p in files_of(path.read_bytes()) if p.startswith("package/example/")]


def test_cli_without_a_source_checkout_says_there_are_no_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ig, "SOURCE_EXAMPLES_DIR", tmp_path / "nowhere")
    result = run("profiles", "build", "--out", str(tmp_path / "p.tgz"))
    assert result.exit_code == 0, result.output
    assert "no examples" in result.stderr


def test_cli_examples_and_no_examples_exclude_each_other(tmp_path: Path) -> None:
    result = run("profiles", "build", "--examples", str(EXAMPLES), "--no-examples")
    assert result.exit_code == 2
    assert "exclude each other" in result.output


def test_cli_a_missing_examples_folder_is_an_error(tmp_path: Path) -> None:
    result = run(
        "profiles", "build", "--examples", str(tmp_path / "none"), "--out", str(tmp_path / "p")
    )
    assert result.exit_code == 1
    assert "no examples folder" in result.stderr
    assert not (tmp_path / "p").exists()


def test_cli_a_package_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = run("profiles", "build", "--out", str(tmp_path / "file" / "p.tgz"))
    assert result.exit_code == 1
    assert "cannot write the package" in result.stderr


def test_cli_a_server_that_does_not_answer(tmp_path: Path) -> None:
    result = run(
        "profiles",
        "build",
        "--snapshots-from",
        "http://127.0.0.1:9/fhir",
        "--out",
        str(tmp_path / "p.tgz"),
    )
    assert result.exit_code == 1
    assert "cannot connect" in result.stderr
    assert not (tmp_path / "p.tgz").exists()


# ----------------------------------------------------------------------- loading


def _capabilities(fhir_version: str, snapshot: bool = True) -> Resource:
    types = ["Media", "DocumentReference", "Consent", "Binary", "Provenance"]
    operations = [{"name": "snapshot"}] if snapshot else []
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": fhir_version,
        "rest": [
            {
                "mode": "server",
                "resource": [{"type": t} for t in types]
                + [{"type": "StructureDefinition", "operation": operations}],
                "interaction": [{"code": "transaction"}],
            }
        ],
    }


def _server_holding(rsps: responses.RequestsMock, held: dict[str, list[Resource]]) -> list[str]:
    """A server answering searches by url from ``held`` and recording each PUT."""
    puts: list[str] = []
    rsps.get(f"{BASE}/metadata", json=_capabilities("4.0.1"))

    def search(request: Any) -> tuple[int, dict[str, str], str]:
        url = request.params["url"]
        entries = [{"resource": r} for r in held.get(url, [])]
        return 200, {}, json.dumps({"resourceType": "Bundle", "entry": entries})

    def put(request: Any) -> tuple[int, dict[str, str], str]:
        puts.append(request.path_url.removeprefix("/fhir/"))
        return 200, {}, request.body

    for rtype in ig.LOAD_TYPES:
        rsps.add_callback(responses.GET, f"{BASE}/{rtype}", callback=search)
        rsps.add_callback(responses.PUT, re.compile(rf"{re.escape(BASE)}/{rtype}/.+"), callback=put)
    return puts


@responses.activate
def test_load_puts_what_is_missing_or_different_under_the_id_it_has() -> None:
    package = ig.build_package("R4")
    _, resources = ig.package_contents(package.tgz())
    assert [r["resourceType"] for r in resources][:1] == ["CodeSystem"]
    assert {r["resourceType"] for r in resources} == set(ig.LOAD_TYPES)
    by_url = {r["url"]: r for r in resources}
    same = by_url[f"{BASE_URL_OF}/ValueSet/confidentiality"]
    other = {**by_url[f"{BASE_URL_OF}/CodeSystem/image-kind"], "id": "42", "title": "old"}
    puts = _server_holding(
        responses.mock,
        {same["url"]: [{**same, "meta": {"versionId": "3"}}], other["url"]: [other]},
    )
    report = ig.load_package(FhirClient(BASE), package.tgz())
    assert report.unchanged == ("ValueSet/confidentiality",)
    assert "CodeSystem/42" in report.put and "CodeSystem/image-kind" not in report.put
    assert len(report.put) == len(resources) - 1
    assert sorted(puts) == sorted(report.put)


@responses.activate
def test_load_refuses_a_url_defined_twice_on_the_server() -> None:
    cs = json.loads((PROFILES / "CodeSystem-consent-giver.json").read_text())
    _server_holding(responses.mock, {cs["url"]: [{**cs, "id": "a"}, {**cs, "id": "b"}]})
    with pytest.raises(ig.PackageError, match="defined 2 times"):
        ig.load_resources(FhirClient(BASE), [cs])


@responses.activate
def test_load_refuses_a_package_of_another_fhir_version() -> None:
    _server_holding(responses.mock, {})
    with pytest.raises(BadInput, match=r"package is for FHIR 5\.0\.0, the server is FHIR 4\.0\.1"):
        ig.load_package(FhirClient(BASE), ig.build_package("R5").tgz())


@responses.activate
def test_cli_load_builds_the_package_of_the_servers_version(tmp_path: Path) -> None:
    puts = _server_holding(responses.mock, {})
    result = run("profiles", "load", "--server", BASE)
    assert result.exit_code == 0, result.output
    assert len(puts) == len(ig.conformance_resources("R4"))
    assert "StructureDefinition/clinical-image" in result.stdout
    assert f"{len(puts)} put, 0 already there" in result.stderr
