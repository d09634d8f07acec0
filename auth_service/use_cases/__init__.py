"""The auth service's use cases: what a request asks of the service, above the lower packages.

Owns: the token endpoint's grants (grants: login and refresh; client_grant: client_credentials), ending
things (revoke: logout scopes, RFC 7009, ending a session or a user's tokens, password changes), RFC 7662
introspection (introspection) and who is calling (authn). Each checks what needs no lock, prepares what is
slow, and hands the log writer its intents.

May import: the lower packages (db, log, tokens, accounts), the contract, the errors, and the top-level
settings, context and traces. The API (`api/`) and the SSF transmitter call it; it imports neither.
"""
