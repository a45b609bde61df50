"""``fhir-images profiles build`` and ``profiles load``: the FHIR NPM package (IG package) of
the profiles, and its conformance resources on a server that cannot install packages."""

from __future__ import annotations

from pathlib import Path

import click

from .. import _igpackage as ig
from ._common import client_for, err, server_option


@click.group("profiles")
def profiles_group() -> None:
    """The conformance resources (profiles, code systems, value sets) as a FHIR package."""


@profiles_group.command(
    "build", short_help="Build the FHIR package (package.tgz) of one FHIR version."
)
@click.option(
    "--fhir-version",
    type=click.Choice(["R4", "R5"], case_sensitive=False),
    default="R4",
    show_default=True,
    help="The package's FHIR version (one per package: the R4 and R5 profiles share URLs).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the package (default ./fhir-images.fhir.<r4|r5>-<version>.tgz).",
)
@click.option(
    "--snapshots-from",
    "snapshots_from",
    default=None,
    metavar="FHIR_BASE_URL",
    help="Give each structure definition its snapshot, made by this server's $snapshot "
    "(nothing is stored there); without it they are differential only.",
)
@click.option(
    "--examples",
    "examples",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the examples (like examples/resources; r5/ is used for R5). Default: "
    "examples/resources of the source checkout fhir-images runs from, if there is one.",
)
@click.option("--no-examples", is_flag=True, help="Build the package without examples.")
@click.pass_context
def profiles_build(
    ctx: click.Context,
    fhir_version: str,
    out: Path | None,
    snapshots_from: str | None,
    examples: Path | None,
    no_examples: bool,
) -> None:
    """Build the FHIR NPM package (package.tgz) of one FHIR version: package.json, .index.json,
    the code systems, value sets and structure definitions, an ImplementationGuide listing
    them, and the examples under example/. Prints the package's path."""
    if no_examples and examples is not None:
        raise click.UsageError("--examples and --no-examples exclude each other")
    rel = ig.release(fhir_version)
    folder: Path | None = None
    if not no_examples:
        folder = examples if examples is not None else ig.SOURCE_EXAMPLES_DIR
        if examples is None and not ig.examples_dir(rel, folder).is_dir():
            err.print(
                "note: no examples (fhir-images is not running from a source checkout; "
                "name a folder with --examples)",
                markup=False,
                soft_wrap=True,
            )
            folder = None
    snapshots = ig.ServerSnapshots(client_for(ctx, snapshots_from)) if snapshots_from else None
    package = ig.build_package(rel, examples=folder, snapshots=snapshots)
    path = out or Path(f"{package.name}-{package.version}.tgz")
    package.write(path)
    for note in package.notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    err.print(
        f"{package.name} {package.version} (FHIR {package.fhir_version}): "
        f"{len(package.conformance)} conformance resources, {len(package.examples)} examples, "
        f"{'with' if package.snapshots else 'without'} snapshots",
        markup=False,
        soft_wrap=True,
    )
    click.echo(str(path))


@profiles_group.command(
    "load", short_help="Put a package's profiles on a server that cannot install packages."
)
@click.argument(
    "package_file",
    required=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@server_option
@click.pass_context
def profiles_load(ctx: click.Context, package_file: Path | None, server: str | None) -> None:
    """Put the code systems, value sets and structure definitions of a package on a FHIR server
    (for a server that cannot install FHIR packages itself): each missing or different one is
    PUT, each under the id it has (on the server if it is there, else in the package), so no
    canonical URL is defined twice. Without PACKAGE_FILE, the package of the server's FHIR
    version is built first (without snapshots or examples)."""
    client = client_for(ctx, server)
    if package_file is None:
        data = ig.build_package(client.version.name).tgz()
    else:
        data = package_file.read_bytes()
    report = ig.load_package(client, data)
    for ref in report.put:
        click.echo(f"put: {ref}")
    err.print(
        f"{client.base_url.rstrip('/')}: {len(report.put)} put, "
        f"{len(report.unchanged)} already there as they are",
        markup=False,
        soft_wrap=True,
    )


def register(main: click.Group) -> None:
    main.add_command(profiles_group)
