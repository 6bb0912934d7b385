"""Champion/challenger routing by a stable hash of the user id, and renaming a session's products
from one catalogue to another."""

from __future__ import annotations

import subprocess
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.routing import Routing, rebase_session, user_bucket
from worker.core.session import Session

users = st.text(min_size=1, max_size=40)
shares = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(users, shares)
def test_the_same_user_always_gets_the_same_version_for_a_fixed_share(user, share):
    routing = Routing("champ", "chall", share)
    first = routing.version_for(user)
    assert all(Routing("champ", "chall", share).version_for(user) == first for _ in range(3))
    assert 0.0 <= user_bucket(user) < 1.0


def test_the_bucket_does_not_depend_on_the_process():
    """Python's hash() is salted per process; the bucket must not be."""
    code = "from worker.core.routing import user_bucket; print(repr(user_bucket('user-123')))"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert runs == {repr(user_bucket("user-123"))}


@settings(max_examples=20, deadline=None)
@given(st.floats(min_value=0.05, max_value=0.95))
def test_the_share_of_users_routed_to_the_challenger_is_near_the_share(share):
    routing = Routing("champ", "chall", share)
    n = 20_000
    routed = sum(routing.version_for(f"user-{i}") == "chall" for i in range(n))
    # Binomial: 4 standard deviations at most 0.0142 for n = 20000.
    assert abs(routed / n - share) < 0.015


@given(st.lists(users, min_size=1, max_size=50), shares, shares)
def test_raising_the_share_only_moves_users_into_the_challenger(user_ids, a, b):
    low, high = sorted((a, b))
    before, after = Routing("champ", "chall", low), Routing("champ", "chall", high)
    for user in user_ids:
        if before.version_for(user) == "chall":
            assert after.version_for(user) == "chall"
        moved = before.version_for(user) != after.version_for(user)
        assert moved == (low <= user_bucket(user) < high)


def test_without_a_challenger_or_share_everyone_gets_the_champion():
    assert Routing("champ").versions == ("champ",)
    assert Routing("champ", "chall", 0.0).versions == ("champ",)
    assert Routing("champ", "chall", 0.3).versions == ("champ", "chall")
    assert {Routing("champ", "chall", 0.0).version_for(f"u{i}") for i in range(100)} == {"champ"}
    assert Routing("champ", "chall", 0.3).role_of("chall") == "challenger"
    with pytest.raises(ValueError):
        Routing("champ", "chall", 1.5)


def test_rebase_renames_products_by_id_and_drops_unknown_ones():
    source = ["a", "b", "c", "d"]
    target = {"d": 0, "a": 7, "c": 3}  # "b" is unknown to the target
    session = Session(
        session_id="s",
        start_ms=1,
        last_ms=9,
        n_events=4,
        n_carts=1,
        codes=array("i", [0 * 4 + 0, 1 * 4 + 1, 2 * 4 + 0, 3 * 4 + 2]),
        times_ms=array("q", [1, 2, 3, 9]),
        prev_ms=3,
        partition=2,
        offset=41,
    )
    moved = rebase_session(session, source.__getitem__, target.get)
    assert moved.items == [7, 3, 0] and moved.types == [0, 0, 2]
    assert list(moved.times_ms) == [1, 3, 9]
    assert (moved.n_events, moved.n_carts, moved.partition, moved.offset) == (4, 1, 2, 41)
    assert session.items == [0, 1, 2, 3]  # the source is left as it was
