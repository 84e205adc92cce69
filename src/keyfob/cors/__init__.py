"""Cross-origin access for browser-only apps (public OAuth clients).

``policy`` decides (pure functions: which paths, which origins belong to which client,
what a preflight may allow); ``middleware`` applies it to the ASGI app. See
docs/ARCHITECTURE.md, "Browser apps and CORS", for the reasoning.
"""

from keyfob.cors.middleware import Cors, request_origin

__all__ = ["Cors", "request_origin"]
