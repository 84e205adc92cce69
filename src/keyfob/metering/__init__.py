"""Metering: reserve a call's worst case on every limit before the upstream is called,
settle what it really cost afterwards. ``types`` holds the values, ``rules`` the rules
(pure), ``backend`` the interface the store's backends implement."""

from keyfob.metering.backend import MeteringBackend
from keyfob.metering.types import (
    Counter,
    CounterState,
    CredentialRevoked,
    GrantChanged,
    Limit,
    Refill,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
    WindowState,
)

__all__ = [
    "Counter",
    "CounterState",
    "CredentialRevoked",
    "GrantChanged",
    "Limit",
    "MeteringBackend",
    "Refill",
    "Refused",
    "ReserveRequest",
    "Reserved",
    "Settlement",
    "WindowState",
]
