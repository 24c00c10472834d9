"""Adapters only translate: a protocol in (nginx, Caddy, reverse proxy, ASGI, decision API),
one decision flow, the protocol's answer out."""
