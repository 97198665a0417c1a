#!/bin/sh
# Make the local image boinc-pipeline-test/python-base:bookworm (Debian 12 with
# python3 and venv) without a container registry: debootstrap from Debian's
# package archive, then `docker import`. Used by the Dockerfile build test.
set -eu
tag=boinc-pipeline-test/python-base:bookworm
if docker image inspect "$tag" >/dev/null 2>&1; then
  exit 0
fi
command -v debootstrap >/dev/null || apt-get install -y debootstrap
root=$(mktemp -d /tmp/bp-python-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" http://deb.debian.org/debian
# This machine's CA bundle, so pip trusts a TLS-inspecting proxy in front of PyPI.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$tag"
