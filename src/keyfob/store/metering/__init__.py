"""The metering backends (``metering.backend.MeteringBackend``) and the ledger reads.

- ``sqlite_tx``: one ``sqlite3`` transaction per call (every SQLite opener but the server);
- ``writeback``: the serving process of a SQLite database, deciding in memory with a
  journal and writing batches;
- ``postgres``: one SQL function call per call (``postgres.sql``), through asyncpg;
- ``reads``: what pages, exports and APIs read, through SQLAlchemy on either engine.
"""

from keyfob.metering.types import (
    CredentialRevoked,
    GrantChanged,
    Refused,
    Reserved,
    ReserveRequest,
    Settlement,
)

__all__ = [
    "CredentialRevoked",
    "GrantChanged",
    "Refused",
    "ReserveRequest",
    "Reserved",
    "Settlement",
]
