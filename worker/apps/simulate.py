"""``worker simulate``: the clickstream simulator's edge.

Two modes over the same deterministic generator (:mod:`worker.core.clickstream`):

* ``--out DIR``: write a historical dataset (Avro container files + catalogue) for training.
* ``--produce``: replay simulated time to Kafka at ``speedup`` times real time (optionally capped
  at ``max_rate`` records/s). Every record's ``event_time`` and Kafka timestamp are the wall-clock
  time it is sent, so latencies measured downstream are real; the simulated gaps (seconds
  between views, minutes to a purchase) shrink by ``speedup``.

The live stream starts where the default training history ends (``LIVE_START_MS``), with the
same catalogue and user population, so trained models know its returning users and most of its
products; as in a real shop, half of its sessions are first-time visitors and products keep
launching (``SimulationConfig.new_user_share``, ``new_product_share``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from worker.config import (
    SIMULATE_CATEGORIES,
    SIMULATE_CORRUPT_EVERY,
    SIMULATE_DAYS,
    SIMULATE_MAX_RATE,
    SIMULATE_PRODUCTS,
    SIMULATE_SEED,
    SIMULATE_USERS,
    validate,
)
from worker.core.clickstream import (
    Catalogue,
    ClickstreamSimulator,
    SimulationConfig,
    make_catalogue,
)

DAY_MS = 86_400_000
#: 2026-01-01T00:00:00Z: start of the default training history.
HISTORY_START_MS = 1_767_225_600_000
DEFAULT_HISTORY_DAYS = SIMULATE_DAYS.default  # the default of --days
#: The live stream starts at 18:00 UTC of the day after the history: the busy evening hours.
LIVE_START_MS = HISTORY_START_MS + int(DEFAULT_HISTORY_DAYS * DAY_MS) + 18 * 3_600_000


@dataclass(frozen=True)
class SimulatorSettings:
    """The generator: catalogue, users, seeds.

    The fields with a ``worker simulate`` flag take their default, and their check, from its
    declaration in :mod:`worker.config` (``SIMULATE_SETTINGS``).
    """

    n_products: int = SIMULATE_PRODUCTS.field()
    n_categories: int = SIMULATE_CATEGORIES.field()
    n_users: int = SIMULATE_USERS.field()
    seed: int = SIMULATE_SEED.field()
    catalogue_seed: int = 0

    def __post_init__(self) -> None:
        """Check the flagged fields as the command line does, for objects built in code too.

        Raises:
            SettingError: a flagged field's value is unusable (``--users: -1 is not positive``).
        """
        validate(self)


#: The catalogue's popularity is Zipf-Mandelbrot, ``(rank + q) ** -0.9`` with ``q`` this share of
#: the products: a flat head, as in real samples (DIGINETICA: the 10 most viewed products have
#: 1.6 % of the views; pure Zipf over 5,000 products would give them about 20 %). Calibrated with
#: ``worker-dev calibrate``.
ZIPF_OFFSET_SHARE = 0.01


def build(settings: SimulatorSettings) -> tuple[Catalogue, ClickstreamSimulator]:
    catalogue = make_catalogue(
        settings.n_products,
        settings.n_categories,
        seed=settings.catalogue_seed,
        zipf_offset=ZIPF_OFFSET_SHARE * settings.n_products,
    )
    config = replace(SimulationConfig(), n_users=settings.n_users)
    return catalogue, ClickstreamSimulator(catalogue, config, seed=settings.seed)


def write_history(
    out_dir: Path,
    settings: SimulatorSettings,
    *,
    days: float = DEFAULT_HISTORY_DAYS,
    start_ms: int = HISTORY_START_MS,
) -> dict[str, Any]:
    """Write ``days`` of history starting at ``start_ms``; return the dataset summary."""
    from worker.apps.dataset import write_dataset

    catalogue, simulator = build(settings)
    end_ms = start_ms + int(days * DAY_MS)
    meta = {
        "generator": "worker simulate",
        "settings": settings.__dict__,
        "start_ms": start_ms,
        "end_ms": end_ms,
    }
    return write_dataset(out_dir, catalogue, simulator.records(start_ms, end_ms), meta)


def corrupt(value: bytes, rng: random.Random) -> bytes:
    """A malformed copy of an encoded record (for demonstrating the dead-letter path)."""
    choice = rng.randrange(3)
    if choice == 0:
        return value[: max(1, len(value) // 2)]  # truncated body
    if choice == 1:
        return b"\x7f" + value[1:]  # wrong magic byte
    flipped = bytearray(value)
    flipped[10] ^= 0xFF  # first body byte: the event_id length turns absurd
    return bytes(flipped)


def paced(
    records: Iterator[tuple[str, dict]],
    *,
    speedup: float,
    max_rate: float | None,
    duration_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[tuple[str, dict]]:
    """Yield records when their simulated time, divided by ``speedup``, has come (and no faster
    than ``max_rate`` per second); stop after ``duration_s`` of wall time."""
    started = clock()
    first_sim_ms: int | None = None
    for sent, (kind, record) in enumerate(records):
        if first_sim_ms is None:
            first_sim_ms = record["event_time"]
        due = (record["event_time"] - first_sim_ms) / 1000.0 / speedup
        if max_rate:
            due = max(due, sent / max_rate)
        elapsed = clock() - started
        if elapsed > duration_s:
            return
        if due > elapsed:
            if due > duration_s:
                return
            sleep(due - elapsed)
        yield kind, record


@dataclass
class ProduceSummary:
    events: int = 0
    purchases: int = 0
    corrupted: int = 0
    seconds: float = 0.0


def produce_live(
    kafka: Any,
    topics: Any,
    settings: SimulatorSettings,
    *,
    speedup: float,
    duration_s: float,
    max_rate: float | None = SIMULATE_MAX_RATE.default,
    corrupt_every: int = SIMULATE_CORRUPT_EVERY.default,
    start_ms: int = LIVE_START_MS,
    registry: Any = None,
    log: Any = None,
    stop: Any = None,
) -> ProduceSummary:
    """Produce the simulated stream to Kafka in real time (see the module docstring).

    Events go to ``topics.events`` and purchase lines to ``topics.purchases``, both keyed by the
    UTF-8 user id. With ``corrupt_every`` = N, every N-th event is sent malformed instead.
    """
    from worker.kafka.clients import make_producer
    from worker.wire.codec import codec_for

    event_codec = codec_for("BrowsingEvent", registry=registry, topic=topics.events)
    purchase_codec = codec_for("PurchaseOutcome", registry=registry, topic=topics.purchases)
    producer = make_producer(kafka, log)
    failures: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(err.name())

    _, simulator = build(settings)
    # Enough simulated time for the run at this speedup, plus slack for the rate cap.
    sim_end = start_ms + int(duration_s * speedup * 1000) + 1
    rng = random.Random(settings.seed)
    summary = ProduceSummary()
    started = time.monotonic()
    last_log = started
    for kind, record in paced(
        simulator.records(start_ms, sim_end),
        speedup=speedup,
        max_rate=max_rate,
        duration_s=duration_s,
    ):
        if stop is not None and stop.is_set():
            break
        sent_ms = time.time_ns() // 1_000_000
        record = {**record, "event_time": sent_ms}
        key = record["user_id"].encode("utf-8")
        if kind == "event":
            value = event_codec.encode(record)
            summary.events += 1
            if corrupt_every and summary.events % corrupt_every == 0:
                value = corrupt(value, rng)
                summary.corrupted += 1
            topic = topics.events
        else:
            value = purchase_codec.encode(record)
            summary.purchases += 1
            topic = topics.purchases
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, timestamp=sent_ms, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if log is not None and time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            log.info(
                "simulator_progress",
                events=summary.events,
                purchases=summary.purchases,
                corrupted=summary.corrupted,
            )
    remaining = producer.flush(30)
    summary.seconds = time.monotonic() - started
    if failures or remaining:
        from worker.core.errors import BrokerError

        raise BrokerError(f"simulator: {len(failures)} records failed, {remaining} unacknowledged")
    return summary
