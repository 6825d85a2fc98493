#!/usr/bin/env bash
# Builds .nova-venv: Nova 34.0.0 (Flamingo) and oslo.messaging in a venv of their own, with
# devassign installed editable, for the tests under tests/openstack that run inside Nova.
# Nova is never a dependency of devassign; tests that need this venv skip without it.
#   tests/openstack/nova_venv.sh            # build (or update) /path/to/repo/.nova-venv
#   NOVA_VENV=/tmp/nv tests/openstack/nova_venv.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${NOVA_VENV:-.nova-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[nova]" "pytest>=8.2" "httpx>=0.27"
"$VENV/bin/python" -c "import nova.scheduler.filters, oslo_messaging, devassign.openstack.nova_filter"
echo "built $VENV: $("$VENV/bin/python" -c 'import importlib.metadata as m; print("nova", m.version("nova"))')"
