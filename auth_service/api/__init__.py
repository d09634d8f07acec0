"""The HTTP routes of the auth service: each handler loads, checks, calls a use case and answers.

Owns: the OAuth endpoints (oauth), the signed-in user's own endpoints (account), the service clients' log and
snapshot reads (service), the user's event stream (stream), discovery (JWKS, RFC 8414 metadata), form parsing
(forms), the OpenAPI document (openapi, schemas), the ASGI edge (middleware) and what routes depend on (deps).

May import anything of the auth service below the app; `auth_service.app` mounts it.
"""
