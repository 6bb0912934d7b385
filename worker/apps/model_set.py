"""The model versions a worker serves (champion, optional challenger, versions still draining
after a swap), the routing of users between them, and hot reload: watching the models directory
and preparing new versions in the background.

Why a watched path rather than a control topic: the artifacts live on the models volume that
every worker mounts anyway, so the registry's two pointer files (``LATEST``, ``CHALLENGER``,
:mod:`worker.model.registry`) are the one source of truth of what serves; every change to them
is an atomic rename, so a reader sees the old state or the new one, never half; a worker that
starts (or restarts) reads the same files and serves the same state without replaying anything;
and there is no extra topic to create, secure, retain and keep consistent with the directory
(a control record naming a version whose files are not there yet, or a topic compacted away
while the files remain). Polling two small files every few seconds costs nothing measurable.

Hot reload: every ``--model-poll-s`` the loop thread reads the pointer files
(:meth:`ModelWatcher.poll`); on a change a background thread loads each version that is not
loaded yet (booster, tables, lleaves compile or cache), builds its lane (recommender, suggestion
writer, empty session store) and smoke-checks it (:func:`smoke_check`); the loop thread takes the
prepared lanes between two micro-batches (:meth:`ModelWatcher.take`) and swaps them in
(:meth:`ModelSet.swap`): the swap itself is a few dictionary assignments. A version that fails
its load or smoke check leaves the serving state as it was.

Sessions across a swap: each lane has its own session store, with product indices of its own
catalogue. A user's session lives in the store of the lane that answers the user; when the user's
event reaches a lane whose store lacks the user while another lane's store holds them, the session
is moved then (:meth:`ModelSet.lane_for`, renamed by product id with
:func:`~worker.core.routing.rebase_session`): a swap costs nothing up front, and each user pays
some microseconds once. A lane whose version no longer serves is kept until its store is empty
(users moved out, expired, or gone with their partitions) and then dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.apps.batch import Lane
from worker.core.errors import ModelLoadError
from worker.core.features import FEATURE_NAMES
from worker.core.pipeline import BatchEntry, Recommender, Scorer
from worker.core.records import ADD_TO_CART, VIEW, BrowsingEvent
from worker.core.routing import Routing, rebase_session
from worker.core.session import SessionStore
from worker.model.artifact import ModelArtifact
from worker.model.registry import ServingState, serving_state

#: A canned batch must be scored within this many seconds (after the model is loaded and
#: compiled) for a new version to be swapped in.
SMOKE_MAX_S = 5.0
#: Events of the smoke check's canned batch.
SMOKE_EVENTS = 8


class ModelRejected(Exception):
    """A version that cannot serve: unloadable, other features, or a failed smoke check."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"{version}: {reason}")
        self.version = version
        self.reason = reason


@dataclass
class Loaded:
    """A version ready to serve: its artifact, its lane, and its input drift tracker."""

    artifact: ModelArtifact
    lane: Lane
    drift: Any = None


@dataclass
class Prepared:
    """The outcome of a background preparation: the serving state it is for, the versions it
    loaded (those already loaded are reused at the swap), or why it was rejected."""

    state: ServingState
    loaded: dict[str, Loaded] = field(default_factory=dict)
    rejected: ModelRejected | None = None
    seconds: float = 0.0


def smoke_check(
    version: str, artifact: ModelArtifact, scorer: Scorer, *, n_candidates: int, top_k: int
) -> float:
    """Check that ``artifact`` can serve: its feature names are the ones this worker builds, and
    a canned batch (a synthetic user viewing and carting a few of the catalogue's most popular
    products, through the real session, candidate and feature code) scores with finite values
    within :data:`SMOKE_MAX_S`. Returns the seconds the canned batch took.

    Raises:
        ModelRejected: why not.
    """
    if artifact.feature_names != list(FEATURE_NAMES):
        raise ModelRejected(
            version, f"feature names {artifact.feature_names} are not this worker's"
        )
    tables = artifact.tables
    if tables.n_products == 0:
        raise ModelRejected(version, "empty catalogue")
    seen: list[np.ndarray] = []

    class Recording:
        def score(self, features: np.ndarray) -> np.ndarray:
            scores = np.asarray(scorer.score(features))
            seen.append(scores)
            return scores

    # A throwaway recommender (its own small live catalogue, no trending): the served one's
    # counts must not see the canned events.
    recommender = Recommender(
        tables,
        Recording(),
        n_candidates=n_candidates,
        top_k=top_k,
        max_new_products=16,
        trending=False,
    )
    products = [str(p) for p in tables.product_ids[tables.global_top[:SMOKE_EVENTS]].tolist()]
    if not products:
        products = [str(tables.product_ids[0])]
    entries = []
    for i in range(SMOKE_EVENTS):
        product = products[i % len(products)]
        event = BrowsingEvent(
            f"smoke-{i}",
            "\x00smoke",
            "smoke",
            ADD_TO_CART if i % 3 == 2 else VIEW,
            product,
            None,
            None,
            1_700_000_000_000 + i * 1000,
        )
        entries.append(BatchEntry(event, recommender.live.index_of(product)))
    started = time.perf_counter()
    try:
        ranked = recommender.recommend(SessionStore(max_users=1), entries)
    except Exception as exc:  # whatever a broken model raises
        raise ModelRejected(version, f"scoring the canned batch failed: {exc!r}") from exc
    seconds = time.perf_counter() - started
    scores = np.concatenate([s.ravel() for s in seen]) if seen else np.empty(0)
    if scores.size == 0 or ranked.items.shape[0] != SMOKE_EVENTS:
        raise ModelRejected(version, "the canned batch got no scores")
    if not np.all(np.isfinite(scores)):
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        raise ModelRejected(version, f"{bad} of {scores.size} canned scores are not finite")
    if seconds > SMOKE_MAX_S:
        raise ModelRejected(
            version, f"the canned batch took {seconds:.2f} s, more than {SMOKE_MAX_S} s"
        )
    return seconds


class ModelSet:
    """The lanes of the served versions and the routing between them (a
    :class:`~worker.apps.batch.Lanes` for :meth:`BatchStep.run`).

    Args:
        routing: which version answers which user.
        loaded: the versions of ``routing``, loaded.
    """

    def __init__(self, routing: Routing, loaded: dict[str, Loaded]) -> None:
        missing = set(routing.versions) - loaded.keys()
        if missing:
            raise ValueError(f"versions {sorted(missing)} are routed to but not loaded")
        self.routing = routing
        self.loaded: dict[str, Loaded] = dict(loaded)
        self._lanes: list[Lane] = [item.lane for item in loaded.values()]
        self._by_version = {item.lane.version: item.lane for item in loaded.values()}
        self.migrated = 0  # sessions moved between lanes
        self._mark_serving()

    def _mark_serving(self) -> None:
        serving = set(self.routing.versions)
        for lane in self._lanes:
            lane.serving = lane.version in serving
        # Stable order: the champion first, then the challenger, then the draining ones.
        order = {v: i for i, v in enumerate(self.routing.versions)}
        self._lanes.sort(key=lambda lane: order.get(lane.version, len(order)))

    @property
    def state(self) -> ServingState:
        r = self.routing
        challenger = r.challenger if len(r.versions) > 1 else None
        return ServingState(r.champion, challenger, r.share if challenger else 0.0)

    @property
    def champion(self) -> Loaded:
        return self.loaded[self.routing.champion]

    def lane(self, version: str) -> Lane:
        return self._by_version[version]

    # -- Lanes ---------------------------------------------------------------------------------

    def lane_for(self, user_id: str) -> Lane:
        lane = self._by_version[self.routing.version_for(user_id)]
        if len(self._lanes) > 1 and user_id not in lane.sessions:
            for other in self._lanes:
                if other is not lane and user_id in other.sessions:
                    session = other.sessions.take(user_id)
                    if session is not None:
                        lane.sessions.put(
                            user_id,
                            rebase_session(
                                session,
                                other.recommender.live.product_id_of,
                                lane.recommender.live.index_of,
                            ),
                        )
                        self.migrated += 1
                    break
        return lane

    def lanes(self) -> Sequence[Lane]:
        return self._lanes

    # -- state across lanes --------------------------------------------------------------------

    def __len__(self) -> int:
        """Sessions held, every lane's."""
        return sum(len(lane.sessions) for lane in self._lanes)

    def sessions_by_version(self) -> dict[str, int]:
        return {lane.version: len(lane.sessions) for lane in self._lanes}

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget, in every lane, the users whose events came from ``partitions``."""
        return sum(lane.sessions.drop_partitions(partitions) for lane in self._lanes)

    def drain_forgotten(self) -> None:
        for lane in self._lanes:
            lane.sessions.drain_forgotten()

    def expire_idle(self) -> int:
        """Expire idle users in every lane, against the partitions' newest event times over
        all lanes (a draining lane receives no events of its own)."""
        marks: dict[int, int] = {}
        for lane in self._lanes:
            for partition, time_ms in lane.sessions.watermarks().items():
                if time_ms > marks.get(partition, 0):
                    marks[partition] = time_ms
        expired = 0
        for lane in self._lanes:
            lane.sessions.advance_watermarks(marks)
            expired += lane.sessions.expire_idle()
        return expired

    def prune(self) -> list[str]:
        """Drop the lanes that serve no one and hold no session; return their versions."""
        gone = [lane.version for lane in self._lanes if not lane.serving and not lane.sessions]
        for version in gone:
            self._lanes.remove(self._by_version.pop(version))
            del self.loaded[version]
        return gone

    # -- swap ----------------------------------------------------------------------------------

    def swap(self, routing: Routing, loaded: dict[str, Loaded]) -> None:
        """Serve ``routing`` with the lanes already here and the newly ``loaded`` ones; lanes
        that no longer serve drain. Call between micro-batches.

        Raises:
            ValueError: a version of ``routing`` is neither here nor in ``loaded`` (nothing
                changes).
        """
        missing = set(routing.versions) - self.loaded.keys() - loaded.keys()
        if missing:
            raise ValueError(f"versions {sorted(missing)} are neither loaded nor prepared")
        for version, item in loaded.items():
            if version in self.loaded:
                continue  # loaded meanwhile: keep the lane with its sessions
            self.loaded[version] = item
            self._lanes.append(item.lane)
            self._by_version[version] = item.lane
        self.routing = routing
        self._mark_serving()
        self.prune()


def routing_of(state: ServingState) -> Routing:
    """The routing of a registry's serving state.

    Raises:
        ModelLoadError: no champion.
    """
    if state.champion is None:
        raise ModelLoadError("the models directory names no champion (LATEST)")
    return Routing(state.champion, state.challenger, state.share if state.challenger else 0.0)


class ModelWatcher:
    """Polls a models directory's serving state and prepares changes in the background.

    Args:
        models_dir: the registry's directory.
        poll_s: seconds between reads of the pointer files.
        prepare: loads and smoke-checks the versions of a state that are not in the given set
            of loaded versions (runs on the background thread; raises :class:`ModelRejected`).
        log: a structlog-style logger.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        models_dir: Path,
        poll_s: float,
        prepare: Callable[[ServingState, frozenset[str]], dict[str, Loaded]],
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models_dir = models_dir
        self.poll_s = poll_s
        self._prepare = prepare
        self._log = log
        self._clock = clock
        self._next_poll = float("-inf")
        self._target: ServingState | None = None  # the state last prepared, served or rejected
        self._unreadable: str | None = None
        self._thread: threading.Thread | None = None
        self._result: Prepared | None = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def served(self, state: ServingState) -> None:
        """Tell the watcher what serves now (nothing to prepare while the files say the same)."""
        self._target = state

    def retry(self) -> None:
        """Prepare the files' state again at the next poll (a prepared state could not be
        swapped in)."""
        self._target = None
        self._next_poll = float("-inf")

    def read(self) -> ServingState:
        """The files' serving state now.

        Raises:
            ModelLoadError: an unreadable ``CHALLENGER``.
        """
        return serving_state(self.models_dir)

    def poll(self, loaded: frozenset[str]) -> ModelRejected | None:
        """Every ``poll_s``: read the pointer files and start preparing a new state in the
        background (unless a preparation is under way). Cheap otherwise. Returns a rejection
        when the files cannot be read (once per distinct problem)."""
        now = self._clock()
        if now < self._next_poll or self._thread is not None:
            return None
        self._next_poll = now + self.poll_s
        try:
            state = self.read()
        except (ModelLoadError, ValueError, KeyError, TypeError) as exc:
            reason = f"unreadable serving state: {exc}"
            if reason == self._unreadable:
                return None
            self._unreadable = reason
            return ModelRejected("?", reason)
        self._unreadable = None
        if state == self._target:
            return None
        self._target = state
        self._start(state, loaded)
        return None

    def _start(self, state: ServingState, loaded: frozenset[str]) -> None:
        def work() -> None:
            started = time.perf_counter()
            result = Prepared(state)
            try:
                result.loaded = self._prepare(state, loaded)
            except ModelRejected as exc:
                result.rejected = exc
            except Exception as exc:  # a bug or an I/O error: the old versions keep serving
                result.rejected = ModelRejected(
                    str(state.challenger or state.champion), f"preparing failed: {exc!r}"
                )
            result.seconds = time.perf_counter() - started
            with self._lock:
                self._result = result

        self._log.info(
            "model_change_seen",
            champion=state.champion,
            challenger=state.challenger,
            share=state.share,
        )
        self._thread = threading.Thread(target=work, name="model-prepare", daemon=True)
        self._thread.start()

    def take(self) -> Prepared | None:
        """The finished preparation, once (None while none has finished)."""
        with self._lock:
            result, self._result = self._result, None
        if result is not None and self._thread is not None:
            self._thread.join()
            self._thread = None
        return result

    def wait(self, timeout_s: float = 60.0) -> Prepared | None:
        """Wait for the preparation under way (tests, and the start-up load) and take it."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.take()
