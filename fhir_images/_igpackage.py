"""The FHIR NPM package of fhir-images' conformance resources (an implementation guide package).

``build_package`` turns ``fhir_images/profiles/`` into the ``package.tgz`` that validators and
servers load (the FHIR NPM package format: a gzipped tar whose entries are under ``package/``):

- ``package/package.json``: name ``fhir-images.fhir.r4`` or ``fhir-images.fhir.r5``, the version
  of the profiles, the FHIR version and its core package as the one dependency;
- the code systems and value sets (shared) and the structure definitions of that FHIR version,
  each as ``package/<ResourceType>-<id>.json`` with the id and canonical URL of its file;
- ``package/ImplementationGuide-fhir-images.json``, which lists them and the examples;
- ``package/example/``: each resource of the examples (``examples/resources[/r5]`` of a source
  checkout) as a resource of its own;
- ``package/.index.json`` and ``package/example/.index.json``.

One package per FHIR version: the R4 and R5 structure definitions have the same canonical URLs,
so a package holding both would define each profile twice.

Without a snapshot source the structure definitions stay differential-only, as in the files (a
validator or a server installing the package generates the snapshots); with one (a FHIR server's
``$snapshot``, :func:`server_snapshots`) each carries its snapshot.

The output is deterministic: the same inputs give the same bytes (sorted entries, fixed times,
owners and modes, no gzip name or time).
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import _codes as c
from ._exceptions import BadInput, BadResponse, FhirImagesError

if TYPE_CHECKING:
    from .fhir import FhirClient

Resource = dict[str, Any]
FhirRelease = Literal["R4", "R5"]

#: The FHIR releases a package can be built for, with their version and core package
RELEASES: Mapping[str, tuple[str, str]] = {
    "R4": ("4.0.1", "hl7.fhir.r4.core"),
    "R5": ("5.0.0", "hl7.fhir.r5.core"),
}
PACKAGE_NAME = "fhir-images.fhir"
IG_ID = "fhir-images"
LICENSE = "Apache-2.0"
#: The time every tar entry carries (the one npm uses for reproducible packages)
ENTRY_MTIME = 499162500  # 1985-10-26T08:15:00Z
#: At most this many resources in a package, and bytes in one file: a guard, far above what
#: the profiles and examples hold
MAX_RESOURCES = 2000
MAX_FILE_BYTES = 16 * 1024 * 1024
#: What a FHIR id may be (and what a package file name may hold)
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CANONICAL_TYPES = ("CodeSystem", "ValueSet", "StructureDefinition", "ImplementationGuide")

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
#: The examples, where fhir-images runs from a source checkout (they are not installed with it)
SOURCE_EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples" / "resources"

#: Gives structure definitions their snapshots: takes them (differential only), returns them in
#: the same order, each with its snapshot
SnapshotSource = Callable[[list[Resource]], list[Resource]]


class PackageError(FhirImagesError):
    """The package cannot be built: a conformance resource or example is missing something or
    contradicts the others (the message names the file and the rule)."""


@dataclass(frozen=True)
class IgPackage:
    """A built package: its files by path inside the tar (``package/...``), and what went in."""

    name: str
    version: str
    fhir_version: str
    files: Mapping[str, bytes]
    conformance: tuple[str, ...] = ()  # "Type/id" of each conformance resource
    examples: tuple[str, ...] = ()  # "Type/id" of each example
    snapshots: bool = False
    notes: tuple[str, ...] = ()

    def tgz(self) -> bytes:
        """The package as a gzipped tar, byte for byte the same for the same files."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.files):
                data = self.files[path]
                info = tarfile.TarInfo(path)
                info.size = len(data)
                info.mtime = ENTRY_MTIME
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
            gz.write(raw.getvalue())
        return out.getvalue()

    def write(self, path: Path) -> Path:
        """Write the package to ``path`` (through a temporary file, so a reader never sees half
        a package)."""
        data = self.tgz()
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise PackageError(f"cannot write the package to {path}: {exc.strerror}") from None
        return path


def release(fhir_version: str) -> FhirRelease:
    """``R4`` or ``R5`` from a name or version number (``r4``, ``4.0.1``, ``R5``, ``5.0.0``)."""
    value = fhir_version.strip().upper()
    if value in ("R4", "4.0.1", "4.0"):
        return "R4"
    if value in ("R5", "5.0.0", "5.0"):
        return "R5"
    raise BadInput(f"no package for FHIR version {fhir_version!r}: choose R4 or R5")


def package_name(fhir_version: str) -> str:
    return f"{PACKAGE_NAME}.{release(fhir_version).lower()}"


def _read(path: Path) -> Resource:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PackageError(f"{path.name}: over {MAX_FILE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(
            f"{path.name}: not a readable JSON file ({type(exc).__name__})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise PackageError(f"{path.name}: not a FHIR resource")
    return data


def conformance_resources(fhir_version: str, profiles: Path = PROFILES_DIR) -> list[Resource]:
    """The code systems and value sets of ``profiles``, then the structure definitions of the
    FHIR version (``profiles/`` for R4, ``profiles/r5/`` for R5), each in file-name order."""
    rel = release(fhir_version)
    number = RELEASES[rel][0]
    terminology = [
        r
        for r in (_read(p) for p in sorted(profiles.glob("*.json")))
        if r["resourceType"] in ("CodeSystem", "ValueSet")
    ]
    folder = profiles / "r5" if rel == "R5" else profiles
    definitions = [_read(p) for p in sorted(folder.glob("StructureDefinition-*.json"))]
    if not definitions:
        raise PackageError(f"no structure definitions for FHIR {rel} in {folder}")
    for sd in definitions:
        if sd["resourceType"] != "StructureDefinition" or sd.get("fhirVersion") != number:
            raise PackageError(
                f"StructureDefinition/{sd.get('id')}: fhirVersion {sd.get('fhirVersion')!r}, "
                f"not {number}: it does not belong in the {rel} package"
            )
    resources = [
        *sorted(terminology, key=lambda r: (r["resourceType"], str(r.get("id")))),
        *definitions,
    ]
    _check_conformance(resources)
    return resources


def _check_conformance(resources: list[Resource]) -> None:
    seen_ids: set[tuple[str, str]] = set()
    seen_urls: set[str] = set()
    for r in resources:
        what = f"{r['resourceType']}/{r.get('id')}"
        rid, url = r.get("id"), r.get("url")
        if not isinstance(rid, str) or not _ID.match(rid):
            raise PackageError(f"{what}: no valid id")
        if url != f"{c.CANONICAL_BASE}/{r['resourceType']}/{rid}":
            raise PackageError(f"{what}: url {url!r} is not its canonical URL")
        if (r["resourceType"], rid) in seen_ids or url in seen_urls:
            raise PackageError(f"{what}: defined twice")
        seen_ids.add((r["resourceType"], rid))
        seen_urls.add(url)
        if not r.get("version"):
            raise PackageError(f"{what}: no version")


def profiles_version(resources: Iterable[Resource]) -> str:
    """The one version all the conformance resources carry (the package's version)."""
    versions = {str(r.get("version")) for r in resources}
    if len(versions) != 1:
        raise PackageError(
            f"the conformance resources carry different versions ({', '.join(sorted(versions))})"
            ": a package has one"
        )
    return versions.pop()


# ------------------------------------------------------------------------------- examples


def examples_dir(fhir_version: str, root: Path = SOURCE_EXAMPLES_DIR) -> Path:
    """Where the examples of a FHIR version are under ``root`` (``r5/`` for R5)."""
    return root / "r5" if release(fhir_version) == "R5" else root


def _example_id(stem: str, resource_type: str, taken: set[str]) -> str:
    base = f"{stem}-{resource_type.lower()}"[:60].strip("-.")
    rid, n = base, 2
    while rid in taken:
        rid, n = f"{base}-{n}", n + 1
    return rid


def _replace_strings(value: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [_replace_strings(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _replace_strings(v, mapping) for k, v in value.items()}
    return value


def example_resources(folder: Path) -> list[Resource]:
    """Every example in ``folder`` as a resource of its own, with an id: each entry of a Bundle
    (keeping its id, else ``<file>-<type>``, with the Bundle's ``urn:uuid:`` references turned
    into ``Type/id`` ones, as a server resolves them), and each other resource (id from its
    file name when it has none)."""
    if not folder.is_dir():
        raise PackageError(f"no examples folder {folder}")
    out: list[Resource] = []
    taken: set[str] = set()
    for path in sorted(folder.glob("*.json")):
        data = _read(path)
        stem = path.name.removesuffix(".json").removesuffix(".bundle")
        if data["resourceType"] != "Bundle":
            resource = copy.deepcopy(data)
            rid = resource.get("id") or stem
            resource = {"resourceType": resource["resourceType"], "id": rid, **resource}
            out.append(resource)
            taken.add(rid)
            continue
        entries = [e for e in data.get("entry", []) if isinstance(e.get("resource"), dict)]
        refs: dict[str, str] = {}
        resources = []
        for entry in entries:
            resource = copy.deepcopy(entry["resource"])
            rtype = resource["resourceType"]
            rid = resource.get("id") or _example_id(stem, rtype, taken)
            taken.add(rid)
            resource = {"resourceType": rtype, "id": rid, **resource}
            full = entry.get("fullUrl")
            if isinstance(full, str) and full.startswith("urn:uuid:"):
                refs[full] = f"{rtype}/{rid}"
            resources.append(resource)
        out += [_replace_strings(r, refs) for r in resources]
    for r in out:
        if not _ID.match(str(r["id"])):
            raise PackageError(f"example {r['resourceType']}/{r['id']}: not a valid id")
    if len(out) > MAX_RESOURCES:
        raise PackageError(f"over {MAX_RESOURCES} examples")
    return out


#: The profile of each type of resource fhir-images writes, for examples without meta.profile
_PROFILE_OF_TYPE = {
    "Binary": "image-binary",
    "Media": "clinical-image",
    "DocumentReference": "clinical-image",
    "Consent": "recording-consent",
    "Provenance": "image-provenance",
    "Encounter": "remote-consultation-encounter",
}


def example_profile(resource: Resource, profiles: Iterable[str]) -> str | None:
    """The profile of this package an example conforms to: its ``meta.profile`` if that is one
    of them, else the profile of its type (AuditEvents by their ISO 21089 subtype)."""
    known = set(profiles)
    for p in (resource.get("meta") or {}).get("profile") or []:
        if p in known:
            return str(p)
    name = _PROFILE_OF_TYPE.get(resource["resourceType"])
    if resource["resourceType"] == "AuditEvent":
        codings = resource.get("subtype") or (resource.get("code") or {}).get("coding") or []
        codes = {(s.get("system"), s.get("code")) for s in codings}
        if (c.ISO_LIFECYCLE, "disclose") in codes:
            name = "disclosure-audit-event"
        elif (c.ISO_LIFECYCLE, "destroy") in codes:
            name = "destruction-audit-event"
    url = f"{c.CANONICAL_BASE}/StructureDefinition/{name}" if name else None
    return url if url in known else None


# ------------------------------------------------------------------- the IG and the indexes


def implementation_guide(
    fhir_version: str,
    version: str,
    conformance: list[Resource],
    examples: list[Resource],
) -> Resource:
    """The ImplementationGuide resource of the package: every conformance resource and example
    in ``definition.resource`` (an example names the profile it conforms to: R4
    ``exampleCanonical``, R5 ``isExample`` and ``profile``)."""
    rel = release(fhir_version)
    number = RELEASES[rel][0]
    profiles = [r["url"] for r in conformance if r["resourceType"] == "StructureDefinition"]
    entries: list[Resource] = []
    for r in conformance:
        entry: Resource = {
            "reference": {"reference": f"{r['resourceType']}/{r['id']}"},
            "name": r.get("title") or r.get("name") or r["id"],
        }
        if rel == "R4":
            entry["exampleBoolean"] = False
        else:
            entry["isExample"] = False
        entries.append(entry)
    for r in examples:
        entry = {"reference": {"reference": f"{r['resourceType']}/{r['id']}"}, "name": r["id"]}
        profile = example_profile(r, profiles)
        if rel == "R4":
            if profile:
                entry["exampleCanonical"] = profile
            else:
                entry["exampleBoolean"] = True
        else:
            entry["isExample"] = True
            if profile:
                entry["profile"] = [profile]
        entries.append(entry)
    dates = sorted(str(r["date"]) for r in conformance if r.get("date"))
    ig: Resource = {
        "resourceType": "ImplementationGuide",
        "id": IG_ID,
        "url": f"{c.CANONICAL_BASE}/ImplementationGuide/{IG_ID}",
        "version": version,
        "name": "FhirImages",
        "title": f"fhir-images: clinical images, consent and security labels (FHIR {rel})",
        "status": "active",
        "experimental": False,
        **({"date": dates[-1]} if dates else {}),
        "publisher": "fhir-images",
        "description": (
            "Profiles, code systems and value sets for what fhir-images writes: clinical images "
            "and recordings of patients with their consent, provenance, security labels and "
            "audit events, and examples that conform to them."
        ),
        "jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "GB"}]}],
        "license": LICENSE,
        "packageId": package_name(rel),
        "fhirVersion": [number],
        "definition": {"resource": entries},
    }
    return ig


def _index_entry(filename: str, r: Resource) -> Resource:
    """A file's line in ``.index.json``: url and version of a canonical resource, and the kind
    and type of a structure definition, as the package specification lists them."""
    entry: Resource = {"filename": filename, "resourceType": r["resourceType"], "id": r["id"]}
    keys: tuple[str, ...] = ("url", "version") if r["resourceType"] in _CANONICAL_TYPES else ()
    if r["resourceType"] == "StructureDefinition":
        keys += ("kind", "type")
    for key in keys:
        if isinstance(r.get(key), str):
            entry[key] = r[key]
    return entry


def index(files: Mapping[str, Resource]) -> Resource:
    """``.index.json`` of a folder: a line per resource file (by file name)."""
    return {
        "index-version": 1,
        "files": [_index_entry(name, files[name]) for name in sorted(files)],
    }


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------- snapshots


def _snapshot_order(definitions: list[Resource]) -> list[Resource]:
    """Extensions first, then what derives from them: a server resolves what a profile uses."""
    return sorted(definitions, key=lambda sd: sd.get("type") != "Extension")


class ServerSnapshots:
    """Snapshots generated by a FHIR server's ``$snapshot`` operation (HAPI has it), through a
    :class:`~fhir_images.fhir.FhirClient` (its authentication and retries).

    Each definition is sent whole (``POST [base]/StructureDefinition/$snapshot`` with the
    resource as the ``definition`` parameter); nothing is stored on the server. The server
    resolves the base definitions from its own; the extensions a profile uses it finds only if
    it has them (a server that loaded the package has): where it does not, the extension's
    slices in the snapshots are generic, and :attr:`notes` says so.
    """

    def __init__(self, client: FhirClient, *, timeout: float = 300) -> None:
        self.client = client
        self.base = client.base_url.rstrip("/")
        self.timeout = timeout
        self.notes: list[str] = []

    def _has(self, url: str) -> bool:
        found = self.client.search("StructureDefinition", {"url": url}, max_pages=1)
        return next(found, None) is not None

    def one(self, sd: Resource) -> Resource:
        what = f"$snapshot of StructureDefinition/{sd.get('id')} at {self.base}"
        body = {"resourceType": "Parameters", "parameter": [{"name": "definition", "resource": sd}]}
        r = self.client.request(
            "POST",
            "StructureDefinition/$snapshot",
            json_body=body,
            idempotent=True,  # nothing is stored: sending it again is harmless
            timeout=(10.0, self.timeout),
        )
        try:
            out = r.json()
        except ValueError:
            raise BadResponse(f"{what}: the answer is not JSON") from None
        if not isinstance(out, dict) or out.get("resourceType") != "StructureDefinition":
            raise BadResponse(f"{what}: the answer is not a StructureDefinition")
        if not (out.get("snapshot") or {}).get("element"):
            raise BadResponse(f"{what}: no snapshot in the answer")
        return out

    def __call__(self, definitions: list[Resource]) -> list[Resource]:
        wanted = {str(sd.get("fhirVersion")) for sd in definitions}
        capabilities = self.client.capabilities()
        if "snapshot" not in _operations(capabilities):
            raise BadInput(f"{self.base} has no $snapshot operation: it cannot make snapshots")
        found = str(capabilities.get("fhirVersion", ""))
        if wanted != {found}:
            raise BadInput(
                f"{self.base} is a FHIR {found} server: it cannot make the snapshots of FHIR "
                f"{', '.join(sorted(wanted))} definitions"
            )
        missing = [
            sd["url"]
            for sd in definitions
            if sd.get("type") == "Extension" and not self._has(sd["url"])
        ]
        if missing:
            self.notes.append(
                f"{self.base} does not have the extension(s) {', '.join(missing)}: their slices "
                "in the snapshots are generic (load the package into that server first for full "
                "ones)"
            )
        done = {sd["id"]: _with_snapshot(sd, self.one(sd)) for sd in _snapshot_order(definitions)}
        return [done[sd["id"]] for sd in definitions]


def _operations(capabilities: Resource) -> set[str]:
    """The names of the operations a CapabilityStatement declares (system and type level)."""
    rest: Resource = next(
        (r for r in capabilities.get("rest", []) if r.get("mode") == "server"), {}
    )
    levels = [rest, *(rest.get("resource") or [])]
    return {str(o.get("name")) for level in levels for o in level.get("operation") or []}


def server_snapshots(base_url: str, *, timeout: float = 300) -> ServerSnapshots:
    """The snapshots of the server at ``base_url`` (see :class:`ServerSnapshots`), with a
    client of its own (no authentication)."""
    from .fhir.client import FhirClient

    return ServerSnapshots(FhirClient(base_url), timeout=timeout)


def _with_snapshot(original: Resource, generated: Resource) -> Resource:
    """The definition as written, with the snapshot the server generated (whatever else the
    server changed, such as meta or text, is left out)."""
    return {**original, "snapshot": generated["snapshot"]}


# --------------------------------------------------------------------------------- build


def build_package(
    fhir_version: str,
    *,
    examples: Path | None = None,
    snapshots: SnapshotSource | None = None,
    profiles: Path = PROFILES_DIR,
) -> IgPackage:
    """Build the package of one FHIR version (see the module's description).

    ``examples``: a folder like ``examples/resources`` (its ``r5/`` is used for R5), or None
    for a package without examples. ``snapshots``: gives the structure definitions their
    snapshots (see :func:`server_snapshots`), or None for differential-only definitions.
    """
    rel = release(fhir_version)
    number, core = RELEASES[rel]
    conformance = conformance_resources(rel, profiles)
    version = profiles_version(conformance)
    notes: list[str] = []
    if snapshots is not None:
        definitions = [r for r in conformance if r["resourceType"] == "StructureDefinition"]
        generated = iter(snapshots(definitions))
        notes += getattr(snapshots, "notes", [])
        conformance = [
            next(generated) if r["resourceType"] == "StructureDefinition" else r
            for r in conformance
        ]
    else:
        notes.append(
            "the structure definitions are differential only (no --snapshots-from): a validator "
            "or a server that installs the package generates their snapshots"
        )
    example_list: list[Resource] = []
    if examples is not None:
        example_list = example_resources(examples_dir(rel, examples))
        if not example_list:
            raise PackageError(f"no examples in {examples_dir(rel, examples)}")
    ig = implementation_guide(rel, version, conformance, example_list)
    top = {f"{r['resourceType']}-{r['id']}.json": r for r in [*conformance, ig]}
    ex = {f"{r['resourceType']}-{r['id']}.json": r for r in example_list}
    if len(top) != len(conformance) + 1 or len(ex) != len(example_list):
        raise PackageError("two resources would have the same file name")
    name = package_name(rel)
    manifest: Resource = {
        "name": name,
        "version": version,
        "description": (
            f"fhir-images conformance resources for FHIR {rel}: profiles, code systems and "
            "value sets for clinical images of patients, their consent, provenance, security "
            "labels and audit events" + (", with examples" if example_list else "")
        ),
        "author": "fhir-images",
        "license": LICENSE,
        "url": c.CANONICAL_BASE,
        "canonical": c.CANONICAL_BASE,
        "type": "fhir.ig",
        "fhirVersions": [number],
        "dependencies": {core: number},
        "jurisdiction": "urn:iso:std:iso:3166#GB",
    }
    files: dict[str, bytes] = {"package/package.json": _json(manifest)}
    files["package/.index.json"] = _json(index(top))
    files |= {f"package/{name}": _json(r) for name, r in top.items()}
    if ex:
        files["package/example/.index.json"] = _json(index(ex))
        files |= {f"package/example/{name}": _json(r) for name, r in ex.items()}
    if len(files) > MAX_RESOURCES:
        raise PackageError(f"over {MAX_RESOURCES} files")
    return IgPackage(
        name=name,
        version=version,
        fhir_version=number,
        files=files,
        conformance=tuple(f"{r['resourceType']}/{r['id']}" for r in conformance),
        examples=tuple(f"{r['resourceType']}/{r['id']}" for r in example_list),
        snapshots=snapshots is not None,
        notes=tuple(notes),
    )


def read_package(data: bytes) -> dict[str, bytes]:
    """The files of a package (``package/...`` paths to bytes), bounded in count and size."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if len(out) >= MAX_RESOURCES:
                    raise PackageError(f"over {MAX_RESOURCES} files in the package")
                if not member.isfile():
                    continue
                if member.size > MAX_FILE_BYTES:
                    raise PackageError(f"{member.name}: over {MAX_FILE_BYTES} bytes")
                handle = tar.extractfile(member)
                if handle is not None:
                    out[member.name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"not a package (gzipped tar): {type(exc).__name__}") from None
    return out


# ------------------------------------------------------------------- loading into a server

#: The resource types ``load_package`` puts on a server (what servers validate with)
LOAD_TYPES = ("CodeSystem", "ValueSet", "StructureDefinition")


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_resources` did: the resources it PUT, and those the server already held
    as they are ("Type/id" each)."""

    put: tuple[str, ...]
    unchanged: tuple[str, ...]


def package_contents(data: bytes) -> tuple[Resource, list[Resource]]:
    """The ``package.json`` of a package and its code systems, value sets and structure
    definitions (in that order, extensions before the profiles that use them)."""
    files = read_package(data)
    try:
        manifest = json.loads(files["package/package.json"])
        top = [
            json.loads(body)
            for path, body in sorted(files.items())
            if path.startswith("package/")
            and path.count("/") == 1
            and path.endswith(".json")
            and path != "package/package.json"
            and not path.endswith("/.index.json")
        ]
    except KeyError:
        raise PackageError("no package/package.json in the package") from None
    except (ValueError, UnicodeDecodeError):
        raise PackageError("a file of the package is not JSON") from None
    order = {t: i for i, t in enumerate(LOAD_TYPES)}
    resources = [r for r in top if isinstance(r, dict) and r.get("resourceType") in order]
    resources.sort(key=lambda r: (order[r["resourceType"]], r.get("type") != "Extension"))
    return manifest, resources


def same_content(stored: Resource, resource: Resource) -> bool:
    """Whether a server holds ``resource`` as it is (what a server adds, such as meta or a
    snapshot it generated, aside)."""
    return all(stored.get(k) == v for k, v in resource.items() if k not in ("meta", "text"))


def load_resources(client: FhirClient, resources: Iterable[Resource]) -> LoadReport:
    """Make the server hold each resource once: PUT it where it is missing (under its own id)
    or held otherwise (under the id it has there, so that no canonical URL is defined twice).
    A canonical URL the server already defines more than once is an error: a validator could
    take either definition."""
    put: list[str] = []
    unchanged: list[str] = []
    for resource in resources:
        rtype, url = resource["resourceType"], resource["url"]
        found = list(client.search(rtype, {"url": url}, max_pages=2))
        if len(found) > 1:
            raise PackageError(
                f"{url} is defined {len(found)} times on the server "
                f"({', '.join(str(f.get('id')) for f in found)}): delete all but one first"
            )
        rid = str(found[0]["id"]) if found else resource["id"]
        if found and same_content(found[0], resource):
            unchanged.append(f"{rtype}/{rid}")
            continue
        client.update({**resource, "id": rid})
        put.append(f"{rtype}/{rid}")
    return LoadReport(put=tuple(put), unchanged=tuple(unchanged))


def load_package(client: FhirClient, data: bytes) -> LoadReport:
    """Load a package's code systems, value sets and structure definitions into a server that
    cannot install FHIR packages itself (see :func:`load_resources`). The package must be of
    the server's FHIR version."""
    manifest, resources = package_contents(data)
    server = str(client.capabilities().get("fhirVersion", ""))
    versions = [str(v) for v in manifest.get("fhirVersions") or []]
    if server not in versions:
        raise BadInput(
            f"the package is for FHIR {', '.join(versions) or '(none given)'}, the server is "
            f"FHIR {server}"
        )
    return load_resources(client, resources)


__all__ = [
    "RELEASES",
    "IgPackage",
    "LoadReport",
    "PackageError",
    "ServerSnapshots",
    "SnapshotSource",
    "build_package",
    "conformance_resources",
    "example_resources",
    "implementation_guide",
    "load_package",
    "load_resources",
    "read_package",
    "server_snapshots",
]
