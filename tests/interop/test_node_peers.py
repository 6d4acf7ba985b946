"""The Node peers themselves: tus-js-client resumes with its file-backed URL store after a
SIGKILL (what the tests of `resume serve`'s tus endpoint build on)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.interop.peers import (
    ListeningProcess,
    random_file,
    read_upload,
    start_tus_js_upload,
    tus_js_upload,
)


def test_tus_js_client_with_a_url_store_resumes_after_sigkill(
    node_peers: Path, tus_node: ListeningProcess, tmp_path: Path
) -> None:
    """Killed mid-upload, tus-js-client finds its URL in the store and finishes the same upload."""
    source = random_file(tmp_path / "big.bin", 32 * 2**20)
    store = tmp_path / "urls.json"
    proc = start_tus_js_upload(
        node_peers, source, tus_node.url, chunk_size=256 * 1024, url_store=store
    )
    assert proc.stdout is not None
    accepted = 0
    while accepted < 4 * 2**20:  # each accepted chunk prints a progress line
        line = proc.stdout.readline()
        assert line, f"tus-js-client ended early: {proc.stderr.read() if proc.stderr else ''}"
        accepted = json.loads(line).get("progress", 0)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert store.exists() and accepted < source.stat().st_size
    result = tus_js_upload(node_peers, source, tus_node.url, chunk_size=256 * 1024, url_store=store)
    assert result["resumed"] is True
    assert read_upload(tmp_path / "tusnode", result["url"]) == source.read_bytes()
    assert len(list((tmp_path / "tusnode").glob("*.json"))) == 1  # one upload, not two
