"""The one reconnect loop both halves sit on: backoff, exception translation, heartbeats.

Uploads (:mod:`resume.transfer`) and streams (:mod:`resume.stream`) open every connection
through :class:`resume.net.connector.Reconnector`.
"""
