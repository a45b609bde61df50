#!/usr/bin/env bash
# Build, start and stop the local HAPI FHIR JPA test server (FHIR R4 or R5) without Docker.
#
#   hapi.sh build            build target/fhir-images-hapi.jar if missing or out of date
#   hapi.sh start [--fresh]  build if needed, start in the background, wait for /fhir/metadata
#   hapi.sh stop             stop the server started by 'start' (only the recorded pid)
#   hapi.sh status           say whether it runs, where, and which FHIR version
#   hapi.sh url              print the FHIR base URL
#
# Environment:
#   HAPI_FHIR_VERSION   FHIR version 'start' serves: R4 (default) or R5; the same jar serves both.
#                       A database belongs to the version that created it: 'start' refuses
#                       another version on it unless --fresh (the marker is h2/fhir-version).
#                       Servers of both versions can run at once on different ports/data dirs.
#   HAPI_PORT           port on 127.0.0.1 (default 8080; when unset, status/stop/url use
#                       the port of the server running from HAPI_DATA_DIR, if any)
#   HAPI_DATA_DIR       H2 database, log, pid, port and version files (default: <this dir>/.data;
#                       a relative value is taken relative to the current directory)
#   HAPI_START_TIMEOUT  seconds 'start' waits for the server to answer (default 300)
#   HAPI_FRESH=1        same as 'start --fresh': wipe the H2 database before starting
#   HAPI_JAVA_OPTS      JVM options (default: -Xmx1536m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC)
#   HAPI_IG_PACKAGE     a FHIR package (package.tgz) the server installs when it starts, before it
#                       answers: its code systems, value sets and structure definitions become
#                       resources of the server (ids as in the package) and $validate uses them.
#                       Nothing is downloaded (the package's dependency, the FHIR core, is built in).
#                         unset  build fhir-images' own package for the server's FHIR version into
#                                the data dir ('fhir-images profiles build', with ${PYTHON:-python3}
#                                if it can import fhir_images, else fhir-images on PATH) and load
#                                it; without fhir-images, start with no package (and say so)
#                         auto   the same, but fail if the package cannot be built
#                         none   start with no package
#                         PATH   load that package (it must be of the server's FHIR version)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JAR="$SCRIPT_DIR/target/fhir-images-hapi.jar"
DATA_DIR="${HAPI_DATA_DIR:-$SCRIPT_DIR/.data}"
case "$DATA_DIR" in /*) ;; *) DATA_DIR="$PWD/$DATA_DIR" ;; esac
START_TIMEOUT="${HAPI_START_TIMEOUT:-300}"
JAVA_OPTS="${HAPI_JAVA_OPTS:--Xmx1536m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
DB_DIR="$DATA_DIR/h2"
LOG_FILE="$DATA_DIR/hapi.log"
PID_FILE="$DATA_DIR/hapi.pid"
PORT_FILE="$DATA_DIR/hapi.port"
# FHIR version of the running server (like the port file, removed when it stops) ...
VERSION_FILE="$DATA_DIR/hapi.fhir-version"
# The FHIR package of the running server (a copy, so that a rebuild cannot change it under it).
IG_FILE="$DATA_DIR/ig-package.tgz"
# ... and of the database, kept next to it for as long as the database lives.
DB_VERSION_FILE="$DB_DIR/fhir-version"

log() { echo "hapi.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
	exit 2
}

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
	# Guard against a recycled pid: it must be our jar.
	if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'fhir-images-hapi.jar'; then
		return 1
	fi
	echo "$pid"
}

PORT="${HAPI_PORT:-}"
if [[ -z "$PORT" ]]; then
	PORT=8080
	if running_pid >/dev/null && [[ -f "$PORT_FILE" ]]; then
		PORT="$(cat "$PORT_FILE")"
	fi
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || die "HAPI_PORT must be a port number, got '$PORT'"
BASE_URL="http://127.0.0.1:$PORT/fhir"

FHIR_VERSION="$(printf '%s' "${HAPI_FHIR_VERSION:-R4}" | tr '[:lower:]' '[:upper:]')"
case "$FHIR_VERSION" in
	R4 | R5) ;;
	*) die "HAPI_FHIR_VERSION must be R4 or R5, got '${HAPI_FHIR_VERSION}'" ;;
esac

# The FHIR version the database in DB_DIR was created for; empty when there is no database.
# Databases from before the marker existed were all R4.
database_fhir_version() {
	if [[ -s "$DB_VERSION_FILE" ]]; then
		tr -d '[:space:]' <"$DB_VERSION_FILE"
	elif compgen -G "$DB_DIR/*.db" >/dev/null; then
		echo R4
	fi
}

needs_build() {
	[[ ! -f "$JAR" ]] && return 0
	[[ -n "$(find "$SCRIPT_DIR/pom.xml" "$SCRIPT_DIR/src" -newer "$JAR" -print -quit 2>/dev/null)" ]]
}

cmd_build() {
	if ! needs_build; then
		log "jar is up to date: $JAR"
		return 0
	fi
	# Rewriting the jar under a running server (from any data dir) breaks that server.
	local users
	users="$(pgrep -f -- "-jar $JAR" 2>/dev/null | tr '\n' ' ' || true)"
	if [[ -n "$users" ]]; then
		die "the jar needs a rebuild, but HAPI server(s) with pid(s) ${users% } run from it; stop them first"
	fi
	command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is not installed; it is needed to build the HAPI server"
	command -v java >/dev/null 2>&1 || die "Java is not installed; Java 17+ is needed to build the HAPI server"
	log "building $JAR (the first build downloads dependencies from Maven Central) ..."
	local started=$SECONDS rc
	# (sed drops the stray colour codes Debian's Maven prints even in batch mode)
	set +e
	mvn -B -q -f "$SCRIPT_DIR/pom.xml" package -DskipTests 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g'
	rc=${PIPESTATUS[0]}
	set -e
	if [[ $rc -ne 0 || ! -f "$JAR" ]]; then
		die "HAPI server build FAILED (mvn exit code $rc); see the Maven output above"
	fi
	touch "$JAR"
	log "build finished in $((SECONDS - started))s"
}

print_log_tail() {
	if [[ -f "$LOG_FILE" ]]; then
		log "last 40 lines of $LOG_FILE:"
		tail -n 40 "$LOG_FILE" >&2
	fi
}

# Stop a pid: TERM, wait up to $2 seconds (default 30), then KILL.
# (A JVM still starting up only acts on TERM once Spring has finished starting.)
stop_pid() {
	local pid="$1" grace="${2:-30}" i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < grace; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 1
	done
	log "pid $pid did not exit after ${grace}s; sending KILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 1
	done
}

# fhir_images_cmd: the fhir-images command line, if there is one here
# shellcheck source=../fhir-images-cmd.sh
source "$SCRIPT_DIR/../fhir-images-cmd.sh"

# Put the package the server is to load at IG_FILE (or remove IG_FILE for none), per HAPI_IG_PACKAGE.
prepare_ig_package() {
	local want="${HAPI_IG_PACKAGE-}" cmd
	rm -f "$IG_FILE"
	case "$want" in
		none) log "HAPI_IG_PACKAGE=none: starting without a FHIR package" ;;
		"" | auto)
			cmd="$(fhir_images_cmd)"
			if [[ -z "$cmd" ]]; then
				[[ "$want" == auto ]] && die "HAPI_IG_PACKAGE=auto, but neither ${PYTHON:-python3} with fhir_images nor fhir-images on PATH is there to build the package"
				log "fhir-images is not installed here (neither ${PYTHON:-python3} -m fhir_images.cli nor fhir-images on PATH): starting without its FHIR package (set HAPI_IG_PACKAGE to load one)"
				return 0
			fi
			log "building the fhir-images FHIR $FHIR_VERSION package: $cmd profiles build"
			# shellcheck disable=SC2086  # cmd is a command and its arguments
			if ! $cmd profiles build --fhir-version "$FHIR_VERSION" --out "$IG_FILE" >/dev/null; then
				[[ "$want" == auto ]] && die "building the fhir-images FHIR package FAILED (see above)"
				log "building the fhir-images FHIR package failed (see above): starting without it"
				rm -f "$IG_FILE"
			fi
			;;
		*)
			[[ -f "$want" && -r "$want" ]] || die "HAPI_IG_PACKAGE: no readable file '$want'"
			cp -f -- "$want" "$IG_FILE"
			;;
	esac
}

cmd_start() {
	local fresh="${HAPI_FRESH:-0}"
	while [[ $# -gt 0 ]]; do
		case "$1" in
			--fresh) fresh=1 ;;
			*) die "unknown option for start: $1" ;;
		esac
		shift
	done
	[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "HAPI_START_TIMEOUT must be a number of seconds, got '$START_TIMEOUT'"

	local pid
	if pid="$(running_pid)"; then
		die "HAPI server is already running (pid $pid) at $BASE_URL; run '$0 stop' first"
	fi
	if port_in_use; then
		die "port $PORT on 127.0.0.1 is already in use by another process; stop it or set HAPI_PORT"
	fi
	local db_version=""
	[[ "$fresh" == 1 ]] || db_version="$(database_fhir_version)"
	if [[ -n "$db_version" && "$db_version" != "$FHIR_VERSION" ]]; then
		die "the database in $DB_DIR was created for FHIR $db_version, not $FHIR_VERSION;" \
			"start with HAPI_FHIR_VERSION=$db_version, use another HAPI_DATA_DIR, or wipe it with --fresh"
	fi
	rm -f "$PID_FILE" "$PORT_FILE" "$VERSION_FILE"

	cmd_build

	mkdir -p "$DATA_DIR"
	if [[ "$fresh" == 1 ]]; then
		log "--fresh: wiping the H2 database in $DB_DIR"
		rm -rf "$DB_DIR"
	fi
	mkdir -p "$DB_DIR"
	echo "$FHIR_VERSION" >"$DB_VERSION_FILE"
	[[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
	prepare_ig_package
	# (always passed, so that HAPI_IG_PACKAGE in the environment is never read by the server)
	local ig_arg=--hapi.ig-package=
	if [[ -f "$IG_FILE" ]]; then
		ig_arg="--hapi.ig-package=$IG_FILE"
		log "the server installs the FHIR package $IG_FILE as it starts"
	fi

	local started=$SECONDS
	# shellcheck disable=SC2086  # JAVA_OPTS is a list of options
	nohup java $JAVA_OPTS -jar "$JAR" \
		--server.address=127.0.0.1 \
		--server.port="$PORT" \
		--hapi.data-dir="$DATA_DIR" \
		--hapi.fhir-version="$FHIR_VERSION" \
		"$ig_arg" \
		>"$LOG_FILE" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$PID_FILE"
	echo "$PORT" >"$PORT_FILE"
	echo "$FHIR_VERSION" >"$VERSION_FILE"
	log "starting HAPI FHIR $FHIR_VERSION server (pid $pid, port $PORT, data $DATA_DIR, log $LOG_FILE)"

	while true; do
		if ! kill -0 "$pid" 2>/dev/null; then
			local rc=0
			wait "$pid" 2>/dev/null || rc=$?
			rm -f "$PID_FILE" "$PORT_FILE" "$VERSION_FILE"
			print_log_tail
			die "HAPI server process exited (code $rc) before answering $BASE_URL/metadata"
		fi
		if [[ "$(http_status "$BASE_URL/metadata")" == 200 ]]; then
			break
		fi
		if ((SECONDS - started >= START_TIMEOUT)); then
			print_log_tail
			log "stopping pid $pid"
			stop_pid "$pid" 5
			rm -f "$PID_FILE" "$PORT_FILE" "$VERSION_FILE"
			die "HAPI server did not answer $BASE_URL/metadata within ${START_TIMEOUT}s"
		fi
		sleep 1
	done
	log "HAPI FHIR $FHIR_VERSION server is up after $((SECONDS - started))s (pid $pid)"
	echo "$BASE_URL"
}

cmd_stop() {
	local pid
	if ! pid="$(running_pid)"; then
		if [[ -f "$PID_FILE" ]]; then
			log "stale pid file removed; HAPI server was not running"
			rm -f "$PID_FILE" "$PORT_FILE" "$VERSION_FILE"
		else
			log "HAPI server is not running (no pid file in $DATA_DIR)"
		fi
		return 0
	fi
	log "stopping HAPI server (pid $pid)"
	stop_pid "$pid"
	if kill -0 "$pid" 2>/dev/null; then
		die "pid $pid is still alive"
	fi
	rm -f "$PID_FILE" "$PORT_FILE" "$VERSION_FILE"
	log "stopped"
}

cmd_status() {
	local pid
	if pid="$(running_pid)"; then
		local code version
		code="$(http_status "$BASE_URL/metadata")"
		version="$(cat "$VERSION_FILE" 2>/dev/null || true)"
		version="FHIR ${version:-R4}"
		if [[ "$code" == 200 ]]; then
			echo "running (pid $pid, $version): $BASE_URL"
		else
			echo "starting or unhealthy (pid $pid, $version, metadata answered $code): $BASE_URL"
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
	build) shift; cmd_build "$@" ;;
	start) shift; cmd_start "$@" ;;
	stop) shift; cmd_stop ;;
	status) shift; cmd_status ;;
	url) echo "$BASE_URL" ;;
	-h | --help | help | "") usage ;;
	*) log "unknown command: $1"; usage ;;
esac
