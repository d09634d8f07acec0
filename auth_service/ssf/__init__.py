"""The OpenID Shared Signals transmitter: the log, turned into CAEP Security Event Tokens for receivers that
are not Python resource services (SSF 1.0, CAEP 1.0, RFC 8417 SETs, push RFC 8935 and poll RFC 8936).

Owns: the map from log events to SETs (events, pure), signing them (sets), the stream configurations and
their checks (config, pure), the streams, subjects and cursors in PostgreSQL (streams), reading the log as
SETs (source), poll delivery (poll), push delivery with one deliverer per stream on one leader among the
instances (push, its HTTP/1.1 connection http1, deliverer), the transmitter's own changes to a stream
(updates), and who a receiver is (receivers). Its HTTP routes are auth_service/api/ssf.py;
receivers get their tokens through the client_credentials grant (auth_service/use_cases/client_grant.py).

The log is the outbox: a stream is a cursor (a log position) in ssf_streams, nothing is queued anywhere
else, and every path that revokes appends to the log, so every path reaches receivers, in log order, at
least once.

May import: the standard library, PyJWT, httpx, asyncpg, pydantic, the lower packages (contract, errors,
db, log, tokens, accounts), the top-level settings, context and client_grant, and the relay's leader lock
(relay/leader.py, the one leadership mechanism of the service, reused with a lock and lease of its own).
Nothing imports it but the API and the app.
"""
