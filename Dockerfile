# Sora's image: Debian (bookworm), Python 3.11, Node.js 20, bubblewrap, Sora installed with pip
# from this checkout. See docs/deploy.md for building it, pushing it to your registry and what
# the sandbox needs from the container runtime; deploy/kubernetes/ runs it.
#
#   docker build -t REGISTRY/sora:TAG .
#   docker build --build-arg BASE=my-python:3.11 --build-arg NODE=my-node:20 -t sora .
#
# Both bases are arguments so that the image can be built where nothing can be pulled: BASE
# must be a Debian bookworm system with python3 (3.11) whose `python3 -m venv` works (the
# official python:3.11-slim-bookworm, or debootstrap + python3-venv); NODE any image with
# Node.js 20 at /usr/local/bin/node and npm at /usr/local/lib/node_modules/npm (the official
# node:20-bookworm-slim layout). Node.js is copied from it because bookworm's own nodejs is 18.
ARG BASE=python:3.11-slim-bookworm
ARG NODE=node:20-bookworm-slim

FROM ${NODE} AS node

FROM ${BASE}

# What Sora runs with, as the Makefile's system-deps lists it for a host: bubblewrap and
# setpriv (util-linux, in every Debian base) for the sandbox, libseccomp2 for its seccomp
# filter, rsync and acl (setfacl) for setup's copies and writable folders, curl for the
# `provided` examples' shell bootstraps, libstdc++6 for Node.js, libpq5 for psycopg (the
# PostgreSQL store: psycopg 3 without its binary extra loads the system's libpq). tini is
# PID 1: it forwards SIGTERM to the supervisor and reaps what is re-parented to it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bubblewrap libseccomp2 rsync acl ca-certificates curl libstdc++6 tini libpq5 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version

# Sora in a virtualenv of its own (/opt/sora), from this checkout. Where the build cannot reach
# a package index, put the wheels of Sora's dependencies in ./wheels (`pip wheel . -w wheels`)
# and build with --build-arg PIP_OPTIONS="--no-index --find-links /src": `wheel[s]` copies
# them into /src when the folder exists and nothing when it does not.
ARG PIP_OPTIONS=""
COPY pyproject.toml README.md wheel[s] /src/
COPY sora /src/sora
RUN python3 -m venv /opt/sora \
 && /opt/sora/bin/pip install --no-cache-dir --disable-pip-version-check $PIP_OPTIONS /src \
 && rm -rf /src \
 && /opt/sora/bin/sora-supervisor --help >/dev/null
COPY deploy/container/entrypoint.py deploy/container/probe.py /opt/sora/container/
ENV PATH=/opt/sora/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The non-root user the image runs as by default (docs/deploy.md: with it, `isolation:
# sandbox` needs unprivileged user namespaces in the pod). The Kubernetes manifests run the
# container as root (runAsUser: 0) where the sandbox gives each function a uid of its own.
# /var/lib/sora holds the state dir, the rendered host config and the CURVE keys.
RUN groupadd --system --gid 10001 sora \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sora --shell /usr/sbin/nologin sora \
 && mkdir -p /var/lib/sora /srv/sora/functions \
 && chown sora:sora /var/lib/sora
USER 10001:10001
WORKDIR /var/lib/sora

# 8080 HTTP, 8443 HTTPS (the gateway); 7100 cluster joins and 7101 joined hosts' records (a
# main host); a joined host's workers listen on ports the kernel picks (cluster.advertise).
EXPOSE 8080 8443 7100 7101
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/sora/bin/python", "/opt/sora/container/entrypoint.py"]
CMD ["start"]
