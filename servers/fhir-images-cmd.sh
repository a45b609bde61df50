# Sourced by servers/hapi/hapi.sh and servers/hfs/hfs.sh (bash): how a launcher runs the
# fhir-images command line, to build or load fhir-images' FHIR package.

# Prints "PYTHON -m fhir_images.cli" when ${PYTHON:-python3} can import fhir_images (with its
# command-line extra), else "fhir-images" when that is on PATH; nothing when neither is there.
fhir_images_cmd() {
	local py="${PYTHON:-python3}"
	if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import fhir_images.cli' >/dev/null 2>&1; then
		echo "$py -m fhir_images.cli"
	elif command -v fhir-images >/dev/null 2>&1; then
		echo "fhir-images"
	fi
}
