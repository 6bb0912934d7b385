"""Session state as bytes, for the compacted changelog topic that survives rebalances and crashes.

A session is stored under its user id with product *ids* (not catalogue indices), so a changelog
stays readable by a worker that serves another model version, and by one whose live catalogue
gave the products the model does not know other indices. The worker resolves every id on
restore (:meth:`worker.core.live_catalogue.LiveCatalogue.index_of` adds the products it does not
hold yet), so a session keeps its new products across a rebalance. The format is JSON with short
keys, versioned.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable

from worker.core.errors import DataError
from worker.core.session import Session

FORMAT_VERSION = 1


def encode_session(session: Session, product_id_of: Callable[[int], str]) -> bytes:
    """Serialize one session; ``product_id_of`` names the indices of the serving catalogue."""
    return json.dumps(
        {
            "v": FORMAT_VERSION,
            "sid": session.session_id,
            "start": session.start_ms,
            "last": session.last_ms,
            "prev": session.prev_ms,
            "n": session.n_events,
            "carts": session.n_carts,
            "part": session.partition,
            "off": session.offset,
            "items": [product_id_of(c >> 2) for c in session.codes],
            "types": [c & 3 for c in session.codes],
            "times": list(session.times_ms),
        },
        separators=(",", ":"),
    ).encode()


def decode_session(payload: bytes, index_of: Callable[[str], int | None]) -> Session:
    """Deserialize one session; ``index_of`` gives each product id's index, or None to drop the
    product from the restored history.

    Raises:
        DataError: not a session of a known format version.
    """
    try:
        d = json.loads(payload)
        if d.get("v") != FORMAT_VERSION:
            raise DataError(f"session format {d.get('v')!r}, expected {FORMAT_VERSION}")
        codes, times = [], []
        for pid, t, ts in zip(d["items"], d["types"], d["times"], strict=True):
            index = index_of(pid)
            if index is not None:
                codes.append(index * 4 + int(t))
                times.append(int(ts))
        return Session(
            session_id=d["sid"],
            start_ms=int(d["start"]),
            last_ms=int(d["last"]),
            n_events=int(d["n"]),
            n_carts=int(d["carts"]),
            codes=array("i", codes),
            times_ms=array("q", times),
            prev_ms=int(d["prev"]),
            partition=int(d["part"]),
            offset=int(d["off"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"unreadable session state: {exc}") from exc
