"""The ``fhir-images`` console script: the command line when its extra is installed, else a
one-line hint (the library itself needs neither click nor rich)."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        import click  # noqa: F401
        import rich  # noqa: F401
    except ImportError:
        sys.stderr.write(
            "fhir-images: the command line needs its extra: pip install 'fhir-images[cli]'\n"
        )
        sys.exit(1)
    from .cli import main as cli

    cli()
