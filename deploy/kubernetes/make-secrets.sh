#!/bin/sh
# The Secrets deploy/kubernetes/ expects from the operator, but the store's URL (docs/deploy.md):
#   sora-control-keys  the main hosts' CURVE key pair, allowing the joined hosts' key (worker.key)
#   sora-worker-keys   the joined hosts' key pair, allowing the main hosts' key (control.key)
#   sora-tls           the gateway's certificate and key (given, or a self-signed one for trying)
# Needs `sora` (this checkout's .venv/bin/sora, or the image's: see docs/deploy.md), kubectl
# with access to the cluster, and openssl for a self-signed certificate.
#
#   deploy/kubernetes/make-secrets.sh NAMESPACE [CERT.pem KEY.pem]
set -eu
namespace=${1:?usage: make-secrets.sh NAMESPACE [CERT.pem KEY.pem]}
sora=${SORA:-sora}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

"$sora" keys init "$work/control" >/dev/null
"$sora" keys init "$work/worker" >/dev/null
kubectl -n "$namespace" create secret generic sora-control-keys \
  --from-file=host.key="$work/control/host.key" \
  --from-file=host.key_secret="$work/control/host.key_secret" \
  --from-file=worker.key="$work/worker/host.key"
kubectl -n "$namespace" create secret generic sora-worker-keys \
  --from-file=host.key="$work/worker/host.key" \
  --from-file=host.key_secret="$work/worker/host.key_secret" \
  --from-file=control.key="$work/control/host.key"

if [ $# -ge 3 ]; then
  cert=$2 key=$3
else
  cert="$work/tls.crt" key="$work/tls.key"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 -keyout "$key" -out "$cert" \
    -subj "/CN=sora.example.com" -addext "subjectAltName=DNS:sora.example.com" 2>/dev/null
  echo "sora-tls: a self-signed certificate for sora.example.com (for trying only)"
fi
kubectl -n "$namespace" create secret tls sora-tls --cert="$cert" --key="$key"
