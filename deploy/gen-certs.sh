#!/bin/sh
# Generates a small PKI for an mTLS frontend (--server-port), with openssl:
#
#   ca.crt                    the CA; give it to the frontend (--server-ca-cert) and to clients
#   server.crt, server.key    the frontend's certificate (--server-cert, --server-key),
#                             or a NATS server's (it also serves as the client
#                             certificate of NATS routes, which verify both ways)
#   client.crt, client.key    a client certificate (kube-apiserver, curl, knats dial)
#
# usage: gen-certs.sh OUT_DIR [SERVER_NAME...]
#   SERVER_NAMEs go into the server certificate's subjectAltName (DNS names or
#   IP addresses); default: frontend-connect localhost 127.0.0.1.
# Keeps existing files: run it again and nothing changes; delete OUT_DIR to rotate.
set -eu

out=${1:?usage: gen-certs.sh OUT_DIR [SERVER_NAME...]}
shift
[ "$#" -gt 0 ] || set -- frontend-connect localhost 127.0.0.1
days=${CERT_DAYS:-825}

if [ -s "$out/ca.crt" ] && [ -s "$out/server.crt" ] && [ -s "$out/client.crt" ]; then
  echo "gen-certs: certificates already in $out"
  exit 0
fi
umask 077
mkdir -p "$out"
chmod 0755 "$out" 2>/dev/null || true # keys stay 0600; certificates are public
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

san=
for name in "$@"; do
  case $name in
    *[!0-9.]*) entry="DNS:$name" ;; # not a dotted IPv4 address
    *) entry="IP:$name" ;;
  esac
  case $name in *:*) entry="IP:$name" ;; esac # IPv6
  san="${san:+$san,}$entry"
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj '/CN=knats demo CA' -keyout "$out/ca.key" -out "$out/ca.crt" \
  -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null

issue() { # issue NAME CN EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$out/$1.key" -out "$tmp/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -days "$days" -extfile "$tmp/$1.ext" -out "$out/$1.crt" 2>/dev/null
}
issue server "$1" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san"
issue client 'knats demo client' 'basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'

# The CA key is only needed to issue more certificates.
chmod 0644 "$out/ca.crt" "$out/server.crt" "$out/client.crt"
chmod 0600 "$out/ca.key" "$out/server.key" "$out/client.key"
echo "gen-certs: wrote $out (server names: $*)"
