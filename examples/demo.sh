#!/usr/bin/env bash
# The main job on embedded defaults: a SQLite state store in ./demo, inspected with `resume status`.
set -euo pipefail
cd "$(dirname "$0")/.."
RESUME=.venv/bin/resume
DEMO=demo
mkdir -p "$DEMO"
export RESUME_DB="$PWD/$DEMO/state.db"

echo "== create or migrate the state store at $RESUME_DB"
$RESUME db upgrade
echo "== what is in flight"
$RESUME status
$RESUME status --json
