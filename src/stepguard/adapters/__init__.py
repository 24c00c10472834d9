"""Adapters only translate: a protocol (nginx, Caddy, reverse proxy, ASGI, decision API) in, one decision flow, the protocol's answer out."""
