"""Which model version answers a user (champion/challenger), and moving a user's session from
one version's catalogue to another's. Pure: no Kafka, files or clock.

A user's *bucket* is a number in [0, 1) fixed by the user id alone: the first 8 bytes of the
SHA-256 of its UTF-8 bytes, as an unsigned big-endian integer, over 2**64. Python's ``hash()``
would not do: it is salted per process, so two workers (or one worker after a restart) would
send the same user to different versions. The users whose bucket is below the challenger's
share go to the challenger, the others to the champion: a user stays on one version while the
share stays, and a share raised from ``a`` to ``b`` moves exactly the users with a bucket in
``[a, b)`` to the challenger (and none back). Anyone (the monitor, an analyst) can recompute a
user's bucket from the id with the same two lines.

Sessions hold product *indices* of the serving catalogue of their version; another version has
another catalogue. :func:`rebase_session` renames a session's products by id from one catalogue
to the other, as the session changelog does (:mod:`worker.wire.session_codec`) but without the
JSON round trip.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from worker.core.session import Session

_SCALE = float(2**64)


def user_bucket(user_id: str) -> float:
    """The user's place in [0, 1), stable across processes, machines and Python versions."""
    digest = hashlib.sha256(user_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@dataclass(frozen=True)
class Routing:
    """Champion for every user, or a challenger for the users whose bucket is below ``share``.

    Args:
        champion: the version answering the users the challenger does not.
        challenger: the challenger's version, or None.
        share: the challenger's share of users, in [0, 1] (ignored without a challenger).
    """

    champion: str
    challenger: str | None = None
    share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"a challenger's share is within [0, 1], not {self.share}")

    @property
    def versions(self) -> tuple[str, ...]:
        """The versions that answer someone: the champion first."""
        if self.challenger is None or self.share <= 0.0 or self.challenger == self.champion:
            return (self.champion,)
        return (self.champion, self.challenger)

    def version_for(self, user_id: str) -> str:
        """The version that answers ``user_id``."""
        if self.challenger is not None and self.share > 0.0 and user_bucket(user_id) < self.share:
            return self.challenger
        return self.champion

    def role_of(self, version: str) -> str:
        """``champion``, ``challenger``, or ``""`` for a version that answers no one."""
        if version == self.champion:
            return "champion"
        if version in self.versions:
            return "challenger"
        return ""


def rebase_session(
    session: Session,
    product_id_of: Callable[[int], str],
    index_of: Callable[[str], int | None],
) -> Session:
    """The same session with its products renamed from one catalogue to another.

    Args:
        session: the session, in the source catalogue's indices (left unchanged).
        product_id_of: source catalogue index -> product id.
        index_of: product id -> target catalogue index (a live catalogue adds the products it
            does not hold yet), or None to drop the product from the history.
    """
    codes: array[int] = array("i")
    times: array[int] = array("q")
    for code, time_ms in zip(session.codes, session.times_ms, strict=True):
        index = index_of(product_id_of(code >> 2))
        if index is not None:
            codes.append(index * 4 + (code & 3))
            times.append(time_ms)
    return Session(
        session_id=session.session_id,
        start_ms=session.start_ms,
        last_ms=session.last_ms,
        n_events=session.n_events,
        n_carts=session.n_carts,
        codes=codes,
        times_ms=times,
        prev_ms=session.prev_ms,
        partition=session.partition,
        offset=session.offset,
    )
