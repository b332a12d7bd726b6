#!/usr/bin/env bash
# Regenerate aurora/gen/ (Python bindings) from aurora/api.thrift with the
# Thrift compiler (Debian's thrift-compiler, 0.17). The generated code is
# committed; rerun this after editing the IDL. Generated structs are made
# hashable at import time by aurora/__init__.py (see there).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
command -v thrift >/dev/null || { echo "gen_aurora: the thrift compiler is not installed (apt-get install thrift-compiler)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
thrift --gen py:package_prefix=aurora.gen. -out "$tmp" aurora/api.thrift
rm -f "$tmp"/api/*-remote          # command-line demo clients, not needed
rm -rf aurora/gen
mv "$tmp" aurora/gen
chmod 755 aurora/gen
echo "gen_aurora: wrote aurora/gen/ with $(thrift --version)"
