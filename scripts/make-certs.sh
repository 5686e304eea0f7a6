#!/usr/bin/env bash
# Makes a CA and certificates for raftkv with openssl (the tests run this script, so
# what the docs tell people to run is what CI checks).
#
#   scripts/make-certs.sh DIR [SAN ...]
#
# SANs are the addresses clients and peers use: every member's IP and DNS name, and a
# virtual IP if there is one (127.0.0.1 and localhost are always included).
#   DIR/ca.pem, DIR/ca-key.pem          the cluster's CA (keep ca-key.pem off the members)
#   DIR/server.pem, DIR/server-key.pem  serving certificate, valid for every SAN given
#   DIR/client.pem, DIR/client-key.pem  a client certificate: k3s's --datastore-certfile
#                                       and --datastore-keyfile, etcdctl's --cert/--key
# DAYS (default 3650) sets how long the certificates are valid. An existing CA in DIR is
# reused, so running it again issues new certificates from the same CA.
set -euo pipefail
dir=$1
shift
days=${DAYS:-3650}
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
if [ ! -f ca.pem ]; then
  key ca-key.pem
  openssl req -x509 -new -key ca-key.pem -out ca.pem -days "$days" -subj "/CN=raftkv CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
san="IP:127.0.0.1,DNS:localhost"
for s in "$@"; do
  if [[ $s =~ ^[0-9.]+$ || $s == *:* ]]; then san+=",IP:$s"; else san+=",DNS:$s"; fi
done
issue() {
  local name=$1 cn=$2 ext=$3
  key "$name-key.pem"
  openssl req -new -key "$name-key.pem" -out "$name.csr" -subj "/CN=$cn"
  printf '%b\n' "$ext" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -out "$name.pem" -days "$days" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue server raftkv "subjectAltName=$san\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature"
issue client raftkv-client "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature"
echo "certificates in $dir: ca.pem server.pem server-key.pem client.pem client-key.pem"
