"""The web console: static pages served by the auth service, with a strict Content-Security-Policy."""
