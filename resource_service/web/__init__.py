"""The resource library's web face: FastAPI and ASGI integration, the answer gate, and metrics.

Owns: the `require_principal` dependency and the ASGI middleware with RFC 6750 refusals (dependency), the
pause-safe check when an answer is written (answer_gate), WebSockets authenticated like a request
(websocket) and open connections closed when their token ends (live), and the Prometheus registry of one app
(metrics, auth_metrics).

May import: the standard library, FastAPI, Starlette, prometheus-client, `resource_service.check`,
`resource_service.feed`, `resource_service.errors` and `resource_service.settings`. The entry point
(`resource_service.protection`) and the sample service (`resource_service.app`) sit above it.
"""
