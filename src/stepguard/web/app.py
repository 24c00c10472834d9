"""Moved: the gateway (the whole server's ASGI application) is `stepguard.gateway`; this name
stays for existing imports."""

from stepguard.gateway import Metrics, create_app, store_report

__all__ = ["Metrics", "create_app", "store_report"]
