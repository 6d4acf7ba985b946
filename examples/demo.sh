#!/usr/bin/env bash
# The main job end to end on embedded defaults: a local server on 127.0.0.1, a SQLite state
# store, a 256 MiB file uploaded, interrupted with Ctrl-C (SIGINT), resumed by running the same
# command again, verified, and inspected with `resume status`; then five lines go through a
# stream channel with `resume send` and `resume tail`. Everything lives in ./demo.
set -euo pipefail
cd "$(dirname "$0")/.."
RESUME="${RESUME:-.venv/bin/resume}"
PYTHON="${PYTHON:-.venv/bin/python}"
DEMO="${DEMO_DIR:-demo}"
rm -rf "$DEMO" && mkdir -p "$DEMO"
DEMO=$(cd "$DEMO" && pwd)
export RESUME_DB="$DEMO/state.db"

echo "== 1. start a local server (resume serve) on a free port"
"$RESUME" serve --root "$DEMO/received" --port 0 >"$DEMO/serve.out" 2>"$DEMO/serve.log" &
SERVER=$!
trap 'kill "$SERVER" ${UPLOADER:-} 2>/dev/null || true' EXIT  # never leave an upload behind
for _ in $(seq 100); do grep -q listening "$DEMO/serve.out" 2>/dev/null && break; sleep 0.1; done
URL=$(awk '/listening on/ {print $3}' "$DEMO/serve.out")
echo "   server at $URL, receiving into $DEMO/received"

echo "== 2. make a 256 MiB file"
"$PYTHON" -c "import os; open('$DEMO/data.bin', 'wb').write(os.urandom(256 * 2**20))"

UPLOAD=("$RESUME" upload "$DEMO/data.bin" "$URL" --chunk-size 1MiB --window 2)
echo "== 3. upload it, and press Ctrl-C (SIGINT) part way: ${UPLOAD[*]}"
echo "   (a new file of 64 MiB or more goes over the server's HTTP endpoint, sent straight from"
echo "   the file; smaller ones over WebSocket; --via ws|http picks one)"
"${UPLOAD[@]}" --no-progress &
UPLOADER=$!
for _ in $(seq 200); do  # interrupt once a few chunks are committed
  committed=$("$RESUME" status --json | "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); print(d[0]['chunks']['committed'] if d else 0)")
  [ "$committed" -ge 8 ] && break
  sleep 0.02
done
kill -INT "$UPLOADER" 2>/dev/null || true
set +e; wait "$UPLOADER"; code=$?; set -e
echo "   upload exited with status $code (130 = interrupted, state saved)"

echo "== 4. what is in flight"
"$RESUME" status

echo "== 5. run the same command again: it resumes from the breakpoint"
"${UPLOAD[@]}"

echo "== 6. the server verified it (xxh3-128) before renaming it into place; compare anyway"
cmp "$DEMO/data.bin" "$DEMO/received/data.bin" && echo "   byte-identical"
"$RESUME" status

echo "== 7. the other half: a stream channel on the same server"
CHANNEL="${URL}/streams/demo"
seq 1 5 | "$RESUME" send "$CHANNEL"
echo "   published 5 lines with resume send (each acknowledged once stored on the server)"
echo "   resume tail prints them and keeps consumer 'demo-reader' at the last one it took:"
"$RESUME" tail "$CHANNEL" --consumer demo-reader --from-start --count 3 | sed 's/^/     /'
echo "   run again, it continues after that position:"
"$RESUME" tail "$CHANNEL" --consumer demo-reader --count 2 | sed 's/^/     /'
"$RESUME" status --streams
