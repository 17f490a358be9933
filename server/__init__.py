"""VSML Lab's service: REST API, database, live streams and dashboard pages.

The server never imports torch: it validates experiment configs with
`vsml.config` (pydantic only) and enqueues runs by task name.
"""
