#!/usr/bin/env bash
# Builds .placement-venv: OpenStack Placement 16.0.0 in a venv of its own, for
# tests/openstack/test_placement_mirror.py, which starts it on 127.0.0.1 (SQLite, auth off).
# Placement is never a dependency of devassign; the tests skip without this venv.
#   tests/openstack/placement_venv.sh                     # build (or update) /path/to/repo/.placement-venv
#   DEVASSIGN_PLACEMENT_VENV=/tmp/pv tests/openstack/placement_venv.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${DEVASSIGN_PLACEMENT_VENV:-.placement-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "openstack-placement==16.0.0"
"$VENV/bin/python" -c "import placement.wsgi, placement.deploy"
echo "built $VENV: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("openstack-placement", m.version("openstack-placement"))')"
