"""The feed: keeps an instance's revocation state at the head of the log, whatever the transport.

Owns: the catch-up protocol and its supervision (loop: snapshot, buffer, drain, gap fill, long-poll), the
broker transport (broker) and what it declares on RabbitMQ (topology), the stream transport (stream: the
exchange's RabbitMQ stream, replayed at start instead of a snapshot when it provably reaches back far enough)
and its client of the stream protocol (stream_client), the HTTP client of the auth service
with its fail-over between URLs (auth_client), and a snapshot folded into the state in steps
(snapshot_loading on json_steps), so a large one never holds the event loop; and, imported only when tracing
is on, each traced event's apply span and the first refusal it causes (traces).

May import: the standard library, httpx, aio-pika, rstream, OpenTelemetry (traces only), `amqpkit`,
`tracekit`, `auth_service.contract`, `resource_service.check`, `resource_service.errors` and
`resource_service.settings` (a leaf: the feed reads its transport settings). Never the web layer.
"""
