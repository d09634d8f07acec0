"""The relay: publishes the event log to RabbitMQ in position order, confirmed, with heartbeats.

RabbitMQ is the fast path, not the truth: it can lose, duplicate or reorder messages, and consumers fill any
gap from the log over HTTP. The relay's job is to make the fast path as good as it can be:

- One leader among all auth instances (`leader.LeaderLock`: a session-level advisory lock on a
  dedicated connection). Standbys retry every `leader_retry_interval`, so when the leader's process dies a
  standby leads within `leader_retry_interval` (plus one query) after Postgres closes the dead session, which
  it does at once when the process dies (the kernel closes its socket). A leader that loses its lock
  connection stops publishing at once (its publishing task is cancelled; its cursor UPDATE is fenced).
- Woken by LISTEN on `log.NOTIFY_CHANNEL` on a dedicated connection, so a commit is published without waiting
  for a timer; `poll_interval` is only the backstop for a LISTEN socket that died without anyone noticing.
  Inside `auth serve`, the log writer hands what it commits straight to the relay (`Relay.committed`), which
  sends it before the NOTIFY and the read when it follows the last position sent (window.py).
- Reads from the cursor (`relay_cursor`, one row) with `log.read_payloads_after`, publishes each event
  persistent and mandatory with publisher confirms, pipelined in position order on one channel (a run of
  events as one write: publisher.py), and advances the cursor only after every publish of the batch is
  confirmed.
- Any failure (timeout, nack, return, closed channel or connection) drops the broker connection; the relay
  reconnects with exponential backoff, redeclares the exchange, and resumes from the cursor.
- Every `heartbeat_interval` it publishes a `contract.Heartbeat` with the head of the log (transient, not
  mandatory), so consumers can tell "nothing happened" from "I am cut off".

Delivery is at least once. A crash or failure after the broker confirmed a batch but before the cursor UPDATE
publishes that batch again; so does a timeout on a publish the broker did take. Consumers deduplicate by
position (or message_id = event_id). Within one connection, messages arrive in position order.

A returned message (mandatory, no queue bound for its routing key) is a failure: the cursor does not advance
and the relay retries with backoff, counting `reason="returned"`. So at least one queue must be bound for
every event type, or the relay stalls on the first event nobody routes (resource services bind "#"). That is
the price of never reporting "published" for a message that reached nobody; lag and the failures counter
show it.

Modules: loop (the Relay: stand by or lead, reconnect), pump (one link's publishing: read, send,
heartbeat, confirms, the cursor), leader (the leader lock and the cursor), publisher
(the broker link with confirms), wakeup (LISTEN on the log's channel), reading (the log's reads, on the
relay's own connection), window (the unconfirmed publishes and the writer's hand-off), metrics, cli
(`tokenlife relay`).
"""

from auth_service.relay.loop import Relay

__all__ = ["Relay"]
