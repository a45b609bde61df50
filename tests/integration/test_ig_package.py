"""The FHIR package of the profiles on real servers.

The bundled HAPI (servers/hapi, R4 and R5) installs the package when it starts (hapi.sh builds it
with ``fhir-images profiles build``): its conformance resources are there under the ids and
canonical URLs of their files, each once, and ``$validate`` of the package's examples against
its profiles gives no error without anything uploaded by the test. HFS cannot install a FHIR
package: hfs.sh puts the package's conformance resources on it once it answers (``fhir-images
profiles load``), and the same examples validate there. ``--snapshots-from`` gives every structure
definition a snapshot where the server has ``$snapshot`` (HAPI; HFS has none).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from fhir_images import _igpackage as ig
from fhir_images.cli import main
from fhir_images.fhir.probe import ServerReport

from .test_profiles import (
    HEADERS,
    TIMEOUT,
    _issue_text,
    by_canonical_url,
    ensure_conformance_resources,
    validate,
    version_of,
)

pytestmark = pytest.mark.integration

Resource = dict[str, Any]
#: How the bundled HAPI names itself in its CapabilityStatement (FhirServerConfig)
BUNDLED_HAPI = "fhir-images HAPI FHIR JPA test server"


def bundled_hapi(base: str) -> bool:
    r = requests.get(f"{base}/metadata", headers=HEADERS, timeout=TIMEOUT)
    description = (r.json().get("implementation") or {}).get("description") or ""
    return str(description).startswith(BUNDLED_HAPI)


def loads_at_start(server_name: str, base: str) -> bool:
    """The bundled HAPI installs the package as it starts; the HFS of the test servers (started
    by hfs.sh with fhir-images at hand) has its conformance resources put on it by hfs.sh."""
    return bundled_hapi(base) or server_name == "hfs"


@pytest.fixture(scope="module")
def version(server_report: ServerReport) -> str:
    return version_of(server_report)


@pytest.fixture(scope="module")
def package(version: str) -> ig.IgPackage:
    """The package of the server's FHIR version, built from this checkout (as hapi.sh does)."""
    return ig.build_package(version, examples=ig.SOURCE_EXAMPLES_DIR)


def resources(package: ig.IgPackage, folder: str) -> dict[str, Resource]:
    """The resources of a folder of the package (``package/`` or ``package/example/``)."""
    return {
        path: json.loads(body)
        for path, body in package.files.items()
        if path.startswith(folder)
        and "/" not in path.removeprefix(folder)
        and not path.endswith((".index.json", "package.json"))
    }


def conformance(package: ig.IgPackage) -> list[Resource]:
    return [
        r
        for r in resources(package, "package/").values()
        if r["resourceType"] != "ImplementationGuide"
    ]


def validate_examples(base: str, package: ig.IgPackage, version: str) -> list[str]:
    """``$validate`` of every example of the package against the profile the
    ImplementationGuide names for it: the errors and the warnings that are not allow-listed."""
    guide = json.loads(package.files["package/ImplementationGuide-fhir-images.json"])
    examples = {
        f"{r['resourceType']}/{r['id']}": r for r in resources(package, "package/example/").values()
    }
    problems: list[str] = []
    checked = 0
    for entry in guide["definition"]["resource"]:
        ref = entry["reference"]["reference"]
        if ref not in examples:
            continue
        profile = entry.get("exampleCanonical") or (entry.get("profile") or [None])[0]
        assert profile, f"the guide names no profile for {ref}"
        outcome = validate(base, examples[ref], profile, version)
        problems += [f"{ref}: {_issue_text(i)}" for i in [*outcome.errors, *outcome.warnings]]
        checked += 1
    assert checked == len(examples) > 0
    return problems


def test_the_bundled_servers_have_the_package_from_the_start(
    server_name: str, fhir_base_url: str, package: ig.IgPackage
) -> None:
    """Every conformance resource of the package, once, under the id of its file and with its
    content: nothing needs uploading (and a PUT by id from profiles/ updates, not duplicates)."""
    if not loads_at_start(server_name, fhir_base_url):
        pytest.skip("not a bundled server: it does not load the package at start")
    for resource in conformance(package):
        found = by_canonical_url(fhir_base_url, resource)
        assert [f["id"] for f in found] == [resource["id"]], (
            f"{resource['url']}: {[f['id'] for f in found]} (start the server with "
            "servers/hapi/hapi.sh or servers/hfs/hfs.sh with fhir-images installed)"
        )
        assert ig.same_content(found[0], resource), f"{resource['url']} differs from the package"


def test_the_examples_validate_against_the_package(
    server_name: str,
    fhir_base_url: str,
    package: ig.IgPackage,
    version: str,
    server_report: ServerReport,
) -> None:
    """0 errors. On the bundled servers with nothing uploaded by the test; on another server
    after the missing conformance resources are PUT."""
    if not server_report.validate_operation:
        pytest.skip("the server has no $validate")
    if loads_at_start(server_name, fhir_base_url):
        uploaded: list[str] = []
    else:
        uploaded = ensure_conformance_resources(fhir_base_url, version)
    problems = validate_examples(fhir_base_url, package, version)
    print(f"{len(package.examples)} examples validated; uploaded first: {uploaded or 'nothing'}")
    assert not problems, "\n".join(problems)


def test_a_package_with_snapshots_from_the_server(
    fhir_base_url: str, version: str, server_report: ServerReport, tmp_path: Path
) -> None:
    """``profiles build --snapshots-from``: every structure definition has a snapshot; from the
    bundled HAPI (which has the package's extension) with nothing noted as generic."""
    if not server_report.snapshot_operation:
        pytest.skip("the server has no $snapshot (HFS): a package with snapshots needs one")
    out = tmp_path / "package.tgz"
    result = CliRunner().invoke(
        main,
        [
            "profiles",
            "build",
            "--fhir-version",
            version,
            "--snapshots-from",
            fhir_base_url,
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "with snapshots" in result.stderr
    if bundled_hapi(fhir_base_url):
        assert "generic" not in result.stderr, result.stderr
    files = ig.read_package(out.read_bytes())
    sds = [json.loads(b) for p, b in files.items() if p.startswith("package/StructureDefinition-")]
    expected = [
        r["id"]
        for r in ig.conformance_resources(version)
        if r["resourceType"] == "StructureDefinition"
    ]
    assert sorted(sd["id"] for sd in sds) == sorted(expected)
    for sd in sds:
        assert sd["snapshot"]["element"], f"{sd['id']}: empty snapshot"
        assert sd["snapshot"]["element"][0]["path"] == sd["type"], sd["id"]


def test_the_implementation_guide_is_a_valid_resource(
    fhir_base_url: str, package: ig.IgPackage, version: str, server_report: ServerReport
) -> None:
    """The package's ImplementationGuide conforms to the base ImplementationGuide of its FHIR
    version (R4 ``exampleBoolean``/``exampleCanonical``, R5 ``isExample``/``profile``)."""
    if not server_report.validate_operation:
        pytest.skip("the server has no $validate")
    guide = json.loads(package.files["package/ImplementationGuide-fhir-images.json"])
    base = "http://hl7.org/fhir/StructureDefinition/ImplementationGuide"
    outcome = validate(fhir_base_url, guide, base, version)
    problems = [_issue_text(i) for i in [*outcome.errors, *outcome.warnings]]
    assert not problems, "\n".join(problems)
