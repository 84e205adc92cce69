"""Use a person's Keyfob from a Python app.

from keyfob_client import Keyfob

kf = Keyfob("http://127.0.0.1:8787", "kfapp_...")
kf.sign_in()                      # cached tokens, else the device flow (prints a code)
client = kf.openai()              # openai.OpenAI with a token that refreshes itself
"""

from keyfob_client.cache import MemoryCache, TokenCache, Tokens
from keyfob_client.client import DeviceCode, Keyfob, print_code
from keyfob_client.errors import KeyfobError

__all__ = [
    "DeviceCode",
    "Keyfob",
    "KeyfobError",
    "MemoryCache",
    "TokenCache",
    "Tokens",
    "print_code",
]
