"""Chain access held only while it is used: what long-running work (ingest, `device run`) signs with.

The chain file is locked (flock) by the one process that drives the pairing; a process that kept
its session open for hours would lock every other command out (the ingest service pseudonymizing a
stream, `device run` waiting on its node). ChainAccess opens a chained session for one operation
and closes it: a signature, or the pseudonyms of one batch. Each open waits up to ``lock_wait_s``
for whoever holds the chain, so two services and a command run by hand take turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import handshake
from .session import ChainedSession


@dataclass(frozen=True)
class ChainAccess:
    url: str
    home: Path
    timeout: float = 10.0
    lock_wait_s: float = 0.0

    def session(self) -> ChainedSession:
        """A chained session (a context manager); close it as soon as the operation is done."""
        return ChainedSession.open(self.url, self.home, timeout=self.timeout, lock_wait_s=self.lock_wait_s)

    def sign_digest(self, digest: bytes) -> bytes:
        """One raw-digest signature through the handshake, on a session of its own."""
        with self.session() as s:
            return handshake.sign_digest(s, digest).signature
