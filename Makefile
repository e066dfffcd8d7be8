# Two commands: `make run` serves examples/ over HTTP and HTTPS; `make test` runs the suite.
# Both set up everything they need on a fresh machine (virtualenv, install, Node.js, a dev
# certificate for examples/).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CERT := examples/certs/cert.pem
API_KEY := examples/certs/api-key
JS_SDK := tests/sdk/node_modules/.installed-stamp

.PHONY: run test browser-deps docker-deps postgres-deps bench-containers bench bench-floor bench-runtimes bench-events bench-scaling bench-hosts bench-reload bench-triggers bench-dashboard bench-metrics bench-store check system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages are installed with apt-get, waiting (up to APT_WAIT seconds) for another
# install to finish instead of failing: DPkg::Lock::Timeout makes `apt-get install` wait for
# dpkg's lock, but `apt-get update` fails at once on its lists' lock even with it (apt 2.6.1:
# "Could not get lock /var/lib/apt/lists/lock"), so it is retried while that is its error.
APT_WAIT := 600
APT_UPDATE := deadline=$$((SECONDS + $(APT_WAIT))); \
  until out=$$(LC_ALL=C apt-get update -qq 2>&1); do \
    grep -q 'Could not get lock' <<<"$$out" && ((SECONDS < deadline)) || { echo "$$out" >&2; exit 1; }; \
    echo "waiting for another apt-get to finish"; sleep 5; \
  done
apt_install = $(APT_UPDATE); apt-get -o DPkg::Lock::Timeout=$(APT_WAIT) install -y -qq $(1)

# Node.js runs the functions; bubblewrap sandboxes them and their setup (rsync copies a
# folder in and out of its setup sandbox; setfacl lets a sandboxed function with
# writableFolder write its folder; libseccomp2 builds their seccomp filter); openssl makes
# the dev certificate; curl is what the shell-script `bootstrap` examples talk to the Runtime
# API with; Go builds the Go example; the C toolchain and autotools build aws-lambda-ric's
# native part (the node-ric example). Installed only where missing.
BUILD_TOOLS := autoreconf automake libtoolize cmake g++ make
system-deps:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing Node.js"; $(call apt_install,nodejs npm); }
	@command -v openssl >/dev/null || { $(call apt_install,openssl); }
	@command -v curl >/dev/null || { $(call apt_install,curl); }
	@command -v bwrap >/dev/null || { echo "installing bubblewrap"; $(call apt_install,bubblewrap); }
	@/sbin/ldconfig -p | grep -q 'libseccomp\.so\.2 ' || { echo "installing libseccomp2"; \
	  $(call apt_install,libseccomp2); }
	@command -v rsync >/dev/null || { echo "installing rsync"; $(call apt_install,rsync); }
	@command -v setfacl >/dev/null || { echo "installing acl"; $(call apt_install,acl); }
	@command -v go >/dev/null || { echo "installing Go"; $(call apt_install,golang-go); }
	@for tool in $(BUILD_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	  [ -z "$$missing" ] || { echo "installing build tools"; \
	  $(call apt_install,autoconf automake libtool cmake g++ make); }

# The dashboard's browser tests (tests/browser) drive Debian's Chromium with Playwright (from
# the `test` extra), pointed at /usr/bin/chromium: Playwright's own browser download is not
# used (and could not be fetched here). Only `make test` needs it; `make run` does not.
browser-deps:
	@test -x /usr/bin/chromium || { echo "installing Chromium"; $(call apt_install,chromium); }

# The container tests (issue 20) run against a real Docker engine: Debian's docker.io (dockerd,
# containerd, runc). tests/docker_engine.py uses the engine at /var/run/docker.sock when one
# answers there, else starts a dockerd of its own (no bridge, no iptables) for the session.
# Only `make test` needs it; `make run` does not (only functions with `isolation: container` do).
docker-deps:
	@command -v dockerd >/dev/null || { echo "installing docker.io"; $(call apt_install,docker.io); }

# The store's PostgreSQL backend (issue 21): the tests start servers of their own
# (tests/postgres_server.py: initdb in a temp dir, a free port on 127.0.0.1), so they need
# Debian's server binaries (/usr/lib/postgresql/N/bin), not a running server. psycopg (pure
# Python) loads libpq5, which `make run` needs too where a host uses `store: {url: ...}`.
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "installing postgresql"; $(call apt_install,postgresql); }
	@/sbin/ldconfig -p | grep -q 'libpq\.so\.5 ' || { echo "installing libpq5"; \
	  $(call apt_install,libpq5); }

$(CERT):
	mkdir -p examples/certs
	openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 \
	  -keyout examples/certs/key.pem -out examples/certs/cert.pem -subj "/CN=localhost" \
	  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
	@echo "dev certificate: $(CERT) (self-signed; curl --cacert $(CERT) https://localhost:8443/...)"

# The admin API key of examples/ (host-config.yaml `auth.apiKeys`): made once, printed once.
$(API_KEY):
	mkdir -p examples/certs
	(umask 077; $(PYTHON) -c "import secrets; print('sora_' + secrets.token_urlsafe(32))" \
	  > $(API_KEY))
	@echo "API key for examples/ (printed this once; it is kept in $(API_KEY), mode 0600):"
	@echo "  $$(cat $(API_KEY))"
	@echo "  export SORA_API_KEY=\$$(cat $(API_KEY))   # for curl -H \"Authorization: Bearer ...\" and sora"

run: system-deps $(STAMP) $(CERT) $(API_KEY)
	$(BIN)/sora-supervisor start --config examples/host-config.yaml

check: system-deps $(STAMP) $(CERT) $(API_KEY)
	$(BIN)/sora-supervisor check --config examples/host-config.yaml

# The AWS SDK for JavaScript, which the Invoke API tests drive Sora with (as boto3 and the AWS
# CLI, which come with the `test` extra).
$(JS_SDK): tests/sdk/package.json
	cd tests/sdk && npm install --no-audit --no-fund --no-package-lock --loglevel=error
	touch $(JS_SDK)

test: system-deps browser-deps docker-deps postgres-deps $(STAMP) $(JS_SDK)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

# Benchmarks need wrk (load generator); installed where missing.
bench: system-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/run.py

# What the invocation path's shape costs with none of Sora's work in it, beside Sora and plain Node.
bench-floor: system-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/floor.py

# Every runtime side by side (runs the examples' setup first: Go build, pip, npm).
bench-runtimes: system-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/runtimes.py

# Asynchronous (Event) invocations: acceptance and dispatch, beside serverless-offline.
bench-events: system-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/events.py

bench-scaling: system-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/scaling.py

# Throughput of a sleeping function on 1, 2 and 3 hosts (network namespaces: needs root).
bench-hosts: system-deps $(STAMP)
	$(BIN)/python bench/hosts.py

# Watch mode: a saved file to the first answer of the new code (p50/p95 over 20 edits), and
# calls per second while a function switches to new code under load.
bench-reload: system-deps $(STAMP)
	$(BIN)/python bench/reload.py

# Scheduled and file triggers: a schedule's firing delay, a file's delay to its invocation, and
# 10,000 files at once, beside plain Node (setInterval, fs.watch) and serverless-offline.
bench-triggers: system-deps $(STAMP)
	$(BIN)/python bench/triggers.py

# The dashboard's page loads and /api/stats with 50 functions and 100,000 records (p50 and max
# over 20 loads of each page).
bench-dashboard: system-deps $(STAMP)
	$(BIN)/python bench/dashboard.py

# What metrics cost on the invocation path: server.metrics true and false, same run.
bench-metrics: system-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/metrics.py

# The same hello with isolation: sandbox and isolation: container (image sora-test/node20, built
# on this machine) beside plain Node: warm p50/p99 and req/s, cold starts beside a bare `docker run`.
bench-containers: system-deps docker-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/containers.py

# The PostgreSQL store beside SQLite in one run (two hosts; a PostgreSQL server of the bench's
# own, as the tests start theirs): async events accepted and run, the Invoke API, records
# written per second, with the ratios.
bench-store: system-deps postgres-deps $(STAMP)
	@command -v wrk >/dev/null || { $(call apt_install,wrk); }
	$(BIN)/python bench/store.py

clean:
	rm -rf $(VENV) examples/.sora examples/certs examples/*/node_modules examples/*/.venv \
	  examples/go-hello/bootstrap tests/sdk/node_modules
