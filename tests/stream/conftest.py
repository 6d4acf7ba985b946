"""An in-process `resume serve` on 127.0.0.1 for stream tests (the upload tests' fixtures)."""

from tests.transfer.conftest import RunningServer, StartServer, server, start_server

__all__ = ["RunningServer", "StartServer", "server", "start_server"]
