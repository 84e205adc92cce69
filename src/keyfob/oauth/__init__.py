"""The authorization server, one module per RFC, free of the web framework.

``routes.py`` is the only module here that knows Starlette: it turns HTTP into plain
data, calls the protocol functions, and turns their results or ``OAuthError`` back
into HTTP. Everything else can be tested with a Store and a dict.
"""
