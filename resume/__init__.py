"""resume: resumable, verified file transfers and a reconnecting WebSocket stream client."""

__version__ = "0.1.0"
