#!/usr/bin/env bash
# Create the virtual environment (if missing) and install the pinned dependencies and compresskit.
# Idempotent and fast when nothing changed: a stamp records the hash of the lock file and pyproject.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${COMPRESSKIT_VENV:-.venv}"
stamp="$venv/.compresskit-$(cat requirements/lock.txt requirements/constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
links=()
[ -d /opt/wheels ] && links=(--find-links /opt/wheels)
if "$venv/bin/python" -m pip install -q "uv==0.13.9" 2>/dev/null; then
  install=("$venv/bin/uv" pip install --python "$venv/bin/python" "${links[@]}")
else
  install=("$venv/bin/python" -m pip install -q)
fi
echo "compresskit: installing pinned dependencies into $venv ..." >&2
"${install[@]}" -c requirements/constraints.txt torch==2.13.0
"${install[@]}" -c requirements/constraints.txt -r requirements/lock.txt
"${install[@]}" --no-deps --no-build-isolation -e .
rm -f "$venv"/.compresskit-*
touch "$stamp"
