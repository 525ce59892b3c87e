"""Pure-ASGI middleware, one concern each; `gateway.chains` puts them in order."""
