"""Keyfob: bring your own AI account, with OAuth 2.1 and a metered LLM gateway."""

__version__ = "0.1.0"
