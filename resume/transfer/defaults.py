"""Defaults of the upload engine, importable without its dependencies (for the CLI)."""

DEFAULT_CHUNK_SIZE = 4 * 2**20  # bytes per chunk: large reads, few acks, small ledger
DEFAULT_WINDOW = 16  # chunks in flight: hides the round trip and the server's group fsync
