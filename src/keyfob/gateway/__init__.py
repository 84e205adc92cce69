"""The OpenAI-compatible surface: authenticate, validate, meter, relay.

Every call follows the request path of docs/DESIGN-NOTES.md: token -> grant -> model ->
provider -> terms -> worst-case price -> reservation -> upstream -> usage -> settlement
-> headers.
"""
