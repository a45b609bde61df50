#!/usr/bin/env bash
# The whole test suite on a fresh machine, HAPI included:
#   1. installs the package with its test and lint extras into .venv (a clean environment,
#      so nothing installed by hand elsewhere can hide a missing dependency);
#   2. builds and starts the project's HAPI FHIR server (servers/hapi) on 127.0.0.1;
#   3. runs ruff, mypy and pytest (unit tests, then integration tests against HAPI);
#   4. stops the server it started, whatever happened, and exits non-zero on any failure.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k consent
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
export HAPI_PORT=${HAPI_PORT:-18080}

step() { printf '\n==> %s\n' "$*"; }

step "Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

step "Lint and types"
.venv/bin/ruff check .
.venv/bin/mypy

step "HAPI FHIR server on port $HAPI_PORT"
servers/hapi/hapi.sh start --fresh
trap 'servers/hapi/hapi.sh stop || true' EXIT
FHIR_BASE_URL=$(servers/hapi/hapi.sh url)
export FHIR_BASE_URL
export FHIR_IMAGES_REQUIRE_SERVER=1

step "pytest (unit and integration)"
.venv/bin/python -m pytest "$@"
