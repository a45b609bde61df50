#!/usr/bin/env bash
# The whole test suite on a fresh machine, every FHIR server included:
#   1. installs the package with its test and lint extras into .venv (a clean environment,
#      so nothing installed by hand elsewhere can hide a missing dependency);
#   2. builds and starts the project's FHIR servers on 127.0.0.1: HAPI FHIR (servers/hapi,
#      from Maven Central) as FHIR R4 and, from the same jar, as FHIR R5, each installing the
#      fhir-images FHIR package (the profiles) of its version as it starts, and Helios FHIR
#      Server (servers/hfs, from crates.io with cargo, or from a checksummed ready binary named
#      by HFS_PREBUILT), onto which hfs.sh puts the same profiles;
#   3. runs ruff, mypy, the API reference build (warnings are errors) and pytest: unit tests,
#      then every integration test against each server;
#   4. stops the servers it started, whatever happened, and exits non-zero on any failure.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k consent
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
export HAPI_PORT=${HAPI_PORT:-18080}
export HFS_PORT=${HFS_PORT:-18081}
HAPI_R5_PORT=${HAPI_R5_PORT:-18082}
HAPI_R5_DATA_DIR=${HAPI_R5_DATA_DIR:-servers/hapi/.data-r5}
hapi_r5() {
    HAPI_FHIR_VERSION=R5 HAPI_PORT=$HAPI_R5_PORT HAPI_DATA_DIR=$HAPI_R5_DATA_DIR servers/hapi/hapi.sh "$@"
}

step() { printf '\n==> %s\n' "$*"; }

step "Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The servers get fhir-images' FHIR package as they start: hapi.sh builds it with the fhir-images
# of this environment and HAPI installs it; hfs.sh puts its profiles on HFS ('auto': a package
# that cannot be built or loaded fails the start).
export PATH="$PWD/.venv/bin:$PATH"
export HAPI_IG_PACKAGE=auto HFS_IG_PACKAGE=auto

step "Lint, types and the API reference"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/mkdocs build --strict --quiet

stop_servers() {
    servers/hfs/hfs.sh stop || true
    servers/hapi/hapi.sh stop || true
    hapi_r5 stop || true
}
trap stop_servers EXIT

step "Helios FHIR Server on port $HFS_PORT"
servers/hfs/hfs.sh start --fresh
HFS_URL=$(servers/hfs/hfs.sh url)

step "HAPI FHIR server (R4) on port $HAPI_PORT"
servers/hapi/hapi.sh start --fresh
HAPI_URL=$(servers/hapi/hapi.sh url)

step "HAPI FHIR server (R5) on port $HAPI_R5_PORT"
hapi_r5 start --fresh
HAPI_R5_URL=$(hapi_r5 url)

export FHIR_IMAGES_TEST_SERVERS="hapi=$HAPI_URL,hapi-r5=$HAPI_R5_URL,hfs=$HFS_URL"
export FHIR_IMAGES_REQUIRE_SERVER=1
unset FHIR_BASE_URL

step "pytest (unit and integration)"
.venv/bin/python -m pytest "$@"
