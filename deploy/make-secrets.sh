#!/usr/bin/env bash
# Generates everything deploy/ reads as secrets, into deploy/secrets/ (git-ignored, mode 0700):
#   keys/<identity>.nk, keys/users.json   nkeys of every service and API role (python -m legato.security)
#   auth.conf                             nats-server's authorization block for those keys
#   tls/ca.crt, tls/nats.{crt,key}, tls/client.{crt,key}   a private CA, NATS server and client certificates
#   tls/postgres.{crt,key}                 PostgreSQL's server certificate from the same CA
#   postgres-password, database-url       a random database password and the URL that uses it, over TLS
#                                         with sslmode=verify-full against that CA
# Existing files are kept (run again to add what is missing). Needs python with legato installed (or
# LEGATO_PYTHON="docker run --rm --entrypoint python -v $PWD/deploy/secrets:/work/secrets legato:0.1.0")
# and openssl.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/secrets"
py="${LEGATO_PYTHON:-python3}"
umask 077
mkdir -p "$out/keys" "$out/tls"

$py -m legato.security init "$out/keys"
$py -m legato.security nats-config "$out/keys/users.json" > "$out/auth.conf"

if [ ! -f "$out/tls/ca.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=legato-ca" -keyout "$out/tls/ca.key" -out "$out/tls/ca.crt" 2>/dev/null
fi
issue() {  # name, extendedKeyUsage, subjectAltName
  [ -f "$out/tls/$1.crt" ] && return
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$out/tls/$1.key" -out "$out/tls/$1.csr" 2>/dev/null
  printf 'extendedKeyUsage=%s\nsubjectAltName=%s\n' "$2" "$3" > "$out/tls/$1.ext"
  openssl x509 -req -in "$out/tls/$1.csr" -CA "$out/tls/ca.crt" -CAkey "$out/tls/ca.key" \
    -CAcreateserial -days 825 -extfile "$out/tls/$1.ext" -out "$out/tls/$1.crt" 2>/dev/null
  rm -f "$out/tls/$1.csr" "$out/tls/$1.ext"
}
sans="DNS:localhost,DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:nats.legato.svc.cluster.local"
for i in 0 1 2; do sans="$sans,DNS:nats-$i.nats-headless.legato.svc.cluster.local"; done
issue nats serverAuth,clientAuth "$sans"
issue client clientAuth "DNS:legato-client"
issue postgres serverAuth "DNS:localhost,DNS:postgres,DNS:postgres-0.postgres.legato.svc.cluster.local"

if [ ! -f "$out/postgres-password" ]; then
  openssl rand -hex 24 | tr -d '\n' > "$out/postgres-password"
fi
host="${LEGATO_DB_HOST:-postgres-0.postgres.legato.svc.cluster.local}"
# The CA as the Legato pods mount it (legato-tls in deploy/k8s; compose mounts its own path).
rootcert="${LEGATO_DB_ROOTCERT:-/etc/legato/tls/ca.crt}"
printf 'postgresql://legato:%s@%s:5432/legato?sslmode=verify-full&sslrootcert=%s' \
  "$(cat "$out/postgres-password")" "$host" "$rootcert" > "$out/database-url"
echo "secrets in $out"
