# fhir-images: the command line, the server hook and the gateway, as one image.
#
#   docker build -t fhir-images .
#   docker run --rm fhir-images --help
#
# Two stages: the first installs fhir-images and its dependencies (wheels only) into a virtual
# environment; the second copies that environment onto a clean slim base. pip and setuptools
# are removed from the environment, and no compiler or package manager cache is left. It
# runs as an unprivileged user. Written from Docker's and the python image's documentation;
# the project's own machines have no Docker engine, so it is not built in CI (a unit test keeps
# the commands and options it uses in step with the command line).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fhir-images
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY fhir_images ./fhir_images
RUN /opt/fhir-images/bin/pip install --prefer-binary ".[gateway]" \
    && /opt/fhir-images/bin/pip uninstall --yes pip setuptools

FROM python:3.11-slim
ENV PATH=/opt/fhir-images/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 fhirimages \
    && useradd --system --uid 10001 --gid fhirimages --home-dir /var/lib/fhir-images \
       --create-home --shell /usr/sbin/nologin fhirimages
COPY --from=build /opt/fhir-images /opt/fhir-images
USER 10001:10001
WORKDIR /var/lib/fhir-images
EXPOSE 8770 8765
ENTRYPOINT ["fhir-images"]
CMD ["--help"]
