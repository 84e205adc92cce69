"""The OpenAI-compatible surface: authenticate, validate, meter, relay.

Every call follows DESIGN.md section 3: token -> grant -> model -> provider -> terms ->
worst-case price -> reservation -> upstream -> usage -> settlement -> headers.
"""
