"""``worker dataset import``: DIGINETICA, RetailRocket and generic CSV files into dataset dirs.

The input files are written here from each format's published description, with the edge cases
(anonymous users, a purchase of a never-viewed product, unknown event types, a session gap of
exactly 30 minutes, time formats); the records are read back from the dataset directory.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.apps.test_dataset import DIGINETICA
from worker import cli
from worker.apps.dataset import (
    iter_events,
    iter_purchases,
    load_diginetica,
    read_catalogue,
)
from worker.apps.importers import (
    CsvMapping,
    ImportInputError,
    SessionCutter,
    import_dataset,
    parse_time,
)
from worker.core.errors import ConfigError

MIN_MS = 60_000
GAP_MS = 30 * MIN_MS


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _day_ms(date: str) -> int:
    day = dt.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    return int(day.timestamp()) * 1000


def _event(
    event_id: str,
    user: str,
    session: str,
    etype: str,
    product: str,
    t: int,
    category: str | None = None,
    price: float | None = None,
) -> dict:
    return {
        "event_id": event_id,
        "user_id": user,
        "session_id": session,
        "event_type": etype,
        "product_id": product,
        "category_id": category,
        "price": price,
        "event_time": t,
    }


def _purchase(
    order: str,
    user: str,
    session: str,
    product: str,
    t: int,
    quantity: int = 1,
    price: float | None = None,
) -> dict:
    return {
        "order_id": order,
        "user_id": user,
        "session_id": session,
        "product_id": product,
        "quantity": quantity,
        "price": price,
        "event_time": t,
    }


def _catalogue(out: Path) -> list[tuple[str, str, float, float]]:
    c = read_catalogue(out)
    return list(
        zip(c.product_ids, c.category_ids, c.prices.tolist(), c.popularity.tolist(), strict=True)
    )


def _meta(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text(encoding="utf-8"))


def _same(rows: list[tuple], expected: list[tuple]) -> bool:
    """Catalogue rows equal, NaN equal to NaN."""
    return len(rows) == len(expected) and all(
        a == b
        or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
        for row, want in zip(rows, expected, strict=True)
        for a, b in zip(row, want, strict=True)
    )


# -- RetailRocket ----------------------------------------------------------------------------------


def test_retailrocket(tmp_path: Path) -> None:
    t0 = 1_433_221_332_000
    events = _write(
        tmp_path / "events.csv",
        [
            "timestamp,visitorid,event,itemid,transactionid",
            f"{t0},1,view,10,",  # row 0
            f"{t0 + GAP_MS},1,addtocart,10,",  # row 1: exactly 30 min later, same session
            f"{t0 + 2 * GAP_MS + 1},1,transaction,11,7",  # row 2: > 30 min, new session; 11 unseen
            f"{t0 - 500},2,view,12,",  # row 3: the earliest record
            f"{t0 - 400},2,click,12,",  # row 4: unknown event type
            "yesterday,2,view,12,",  # row 5: unparseable time
            f"{t0 - 300},,view,12,",  # row 6: no visitor
            f"{t0 - 200},2,view,,",  # row 7: no item
            f"{t0 - 100},2,transaction,12,",  # row 8: a transaction without its id
        ],
    )
    properties = _write(
        tmp_path / "item_properties_part1.csv",
        [
            "timestamp,itemid,property,value",
            "200,10,categoryid,6",
            "100,10,categoryid,5",  # older: the category is 6
            "50,10,available,1",
            "300,11,categoryid,9",
            "150,12,790,n100.000",  # the hashed price is not used
        ],
    )
    tree = _write(tmp_path / "category_tree.csv", ["categoryid,parentid", "6,1"])
    out = tmp_path / "ds"
    result = import_dataset("retailrocket", [events, properties, tree], out)

    assert list(iter_events(out)) == [
        _event("rr-3", "v2", "v2-1", "VIEW", "12", t0 - 500),
        _event("rr-0", "v1", "v1-1", "VIEW", "10", t0, "6"),
        _event("rr-1", "v1", "v1-1", "ADD_TO_CART", "10", t0 + GAP_MS, "6"),
    ]
    assert list(iter_purchases(out)) == [_purchase("7", "v1", "v1-2", "11", t0 + 2 * GAP_MS + 1)]
    assert _same(
        _catalogue(out),
        [("10", "6", math.nan, 0.5), ("11", "9", math.nan, 0.0), ("12", "", math.nan, 0.5)],
    )
    meta = _meta(out)
    assert meta == result.meta  # what import_dataset returns is dataset.json
    assert meta["skipped"] == {
        "empty_product": 1,
        "empty_transaction_id": 1,
        "empty_user": 1,
        "unknown_event_type": 1,
        "unparseable_time": 1,
    }
    assert meta["n_skipped"] == 5 and meta["rows_accepted"] == 4
    assert meta["format"] == "retailrocket" and meta["session_gap_ms"] == GAP_MS
    assert [i["file"] for i in meta["inputs"]] == [
        "item_properties_part1.csv",
        "category_tree.csv",
        "events.csv",
    ]
    assert meta["n_sessions"] == 2  # of the browsing events (v1-2 holds only the purchase)


def test_retailrocket_without_events_file_is_refused(tmp_path: Path) -> None:
    tree = _write(tmp_path / "category_tree.csv", ["categoryid,parentid", "6,1"])
    with pytest.raises(ImportInputError, match=r"no events\.csv"):
        import_dataset("retailrocket", [tree], tmp_path / "ds")


# -- DIGINETICA ------------------------------------------------------------------------------------


def test_diginetica_original_files(tmp_path: Path) -> None:
    views = _write(
        tmp_path / "train-item-views.csv",
        [
            "session_id;user_id;item_id;timeframe;eventdate",
            "1;NA;10;1000;2016-05-09",  # row 0: anonymous, but session 1 buys as user 5
            "1;NA;11;500;2016-05-09",  # row 1
            "2;7;10;0;2016-05-10",  # row 2
            "3;NA;12;x;2016-05-10",  # row 3: unparseable time
            "4;NA;12;20;2016-05-10",  # row 4: anonymous: the session is the user
            "2;8;11;50;2016-05-10",  # row 5: a second user in session 2: the earliest one wins
        ],
    )
    purchases = _write(
        tmp_path / "train-purchases.csv",
        [
            "sessionId;userId;timeframe;eventdate;ordernumber;itemId",
            "1;5;2000;2016-05-09;900;13",  # 13 is never viewed
            "2;7;100;2016-05-10;901;10",
        ],
    )
    categories = _write(
        tmp_path / "product-categories.csv", ["itemId;categoryId", "10;100", "11;101", "13;103"]
    )
    products = _write(
        tmp_path / "products.csv",
        ["itemId;pricelog2;product.name.tokens", "10;3;4,5", "13;x;6"],
    )
    out = tmp_path / "ds"
    import_dataset("diginetica", [purchases, products, views, categories], out)

    d1, d2 = _day_ms("2016-05-09"), _day_ms("2016-05-10")
    assert list(iter_events(out)) == [
        _event("dg-1", "u5", "s1", "VIEW", "11", d1 + 500, "101"),
        _event("dg-0", "u5", "s1", "VIEW", "10", d1 + 1000, "100"),
        _event("dg-2", "u7", "s2", "VIEW", "10", d2, "100"),
        _event("dg-4", "s4", "s4", "VIEW", "12", d2 + 20),
        _event("dg-5", "u7", "s2", "VIEW", "11", d2 + 50, "101"),
    ]
    assert list(iter_purchases(out)) == [
        _purchase("900", "u5", "s1", "13", d1 + 2000),
        _purchase("901", "u7", "s2", "10", d2 + 100),
    ]
    assert _same(
        _catalogue(out),
        [
            ("10", "100", 8.0, 0.4),  # price 2 ** pricelog2
            ("11", "101", math.nan, 0.4),
            ("12", "", math.nan, 0.2),
            ("13", "103", math.nan, 0.0),
        ],
    )
    meta = _meta(out)
    assert meta["skipped"] == {"views:unparseable_time": 1}
    assert meta["n_views"] == 5 and meta["n_purchases"] == 2
    roles = {i["file"]: i["role"] for i in meta["inputs"]}
    assert roles == {
        "train-item-views.csv": "views",
        "train-purchases.csv": "purchases",
        "product-categories.csv": "categories",
        "products.csv": "products",
    }


def test_diginetica_sample_file_is_read_by_load_diginetica(tmp_path: Path) -> None:
    sessions = _write(
        tmp_path / "sample.csv",
        [
            "session_id,user_id,item_id,timeframe_ms,eventdate,event,ordernumber",
            "1,NA,9,75,2016-05-09,view,",
            "1,NA,8,70,2016-05-09,view,",
            "2,3,9,10,2016-05-09,purchase,77",
        ],
    )
    categories = _write(tmp_path / "cats.csv", ["itemId;categoryId", "9;1"])
    out = tmp_path / "ds"
    import_dataset("diginetica", [sessions, categories], out)
    events, purchases = load_diginetica(sessions, categories)
    assert list(iter_events(out)) == events
    assert list(iter_purchases(out)) == purchases
    assert _same(_catalogue(out), [("8", "", math.nan, 0.5), ("9", "1", math.nan, 0.5)])


def test_diginetica_needs_its_categories(tmp_path: Path) -> None:
    views = _write(
        tmp_path / "v.csv",
        ["session_id;user_id;item_id;timeframe;eventdate", "1;NA;1;0;2016-05-09"],
    )
    with pytest.raises(ImportInputError, match="product-categories"):
        import_dataset("diginetica", [views], tmp_path / "ds")


# -- generic CSV -----------------------------------------------------------------------------------


def test_generic_csv_with_sessions_iso_times_and_values(tmp_path: Path) -> None:
    clicks = _write(
        tmp_path / "clicks.csv",
        [
            "when;kind;customer;visit;sku;cat;amount;order;qty",
            "2024-01-01T00:00:00Z;Detail;NA;s1;A;c1;9.5;;",  # row 0: anonymous in alice's visit
            "2024-01-01T00:01:00;cart;alice;s1;A;;;;",  # row 1: no zone: UTC
            "2024-01-01T00:02:00+01:00;buy;alice;s1;B;c2;3;o9;2",  # row 2: 23:02 UTC the day before
            "2024-01-01T00:03:00Z;refund;bob;s2;A;;;;",  # row 3: unknown type
            "garbage;detail;bob;s2;A;;;;",  # row 4: unparseable time
            "2024-01-01T00:04:00Z;detail;;s3;C;;abc;;",  # row 5: anonymous; unusable price
            "2024-01-01T00:05:00Z;buy;bob;s2;A;c3;;;",  # row 6: generated order id
            "2024-01-01T00:06:00Z;detail;bob;;A;;;;",  # row 7: no session
            "2024-01-01T00:07:00Z;remove;bob;s2;A;;4;;",  # row 8
        ],
    )
    mapping = CsvMapping.build(
        None,
        {
            "time_col": "when",
            "time_format": "iso8601",
            "type_col": "kind",
            "view_values": "detail",
            "cart_values": "cart",
            "purchase_values": "buy",
            "product_col": "sku",
            "category_col": "cat",
            "price_col": "amount",
            "user_col": "customer",
            "session_col": "visit",
            "order_col": "order",
            "quantity_col": "qty",
            "delimiter": ";",
        },
    )
    out = tmp_path / "ds"
    import_dataset("csv", [clicks], out, mapping=mapping)

    t = _day_ms("2024-01-01")
    assert list(iter_events(out)) == [
        _event("csv-0", "alice", "s1", "VIEW", "A", t, "c1", 9.5),
        _event("csv-1", "alice", "s1", "ADD_TO_CART", "A", t + MIN_MS),
        _event("csv-5", "s3", "s3", "VIEW", "C", t + 4 * MIN_MS),
        _event("csv-8", "bob", "s2", "REMOVE_FROM_CART", "A", t + 7 * MIN_MS, None, 4.0),
    ]
    assert list(iter_purchases(out)) == [
        _purchase("o9", "alice", "s1", "B", t - 58 * MIN_MS, 2, 3.0),
        _purchase(f"bob/s2/{t + 5 * MIN_MS}", "bob", "s2", "A", t + 5 * MIN_MS),
    ]
    # latest known category and price of each product, in time order
    assert _same(
        _catalogue(out),
        [("A", "c3", 4.0, 0.5), ("B", "c2", 3.0, 0.0), ("C", "", math.nan, 0.5)],
    )
    meta = _meta(out)
    assert meta["skipped"] == {"empty_session": 1, "unknown_event_type": 1, "unparseable_time": 1}
    assert meta["unusable_prices_kept_as_unknown"] == 1
    assert meta["mapping"]["view_values"] == ["detail"]
    assert "session_gap_ms" not in meta


def test_generic_csv_cuts_sessions_and_reads_a_mapping_file(tmp_path: Path) -> None:
    """No session column: a gap of exactly 30 minutes stays in the session, 1 ms more cuts it;
    no type column: every row is a view; epoch seconds with fractions."""
    clicks = _write(
        tmp_path / "clicks.csv",
        [
            "ts,uid,item",
            "0,u1,a",
            "1800,u1,b",  # exactly 30 min: same session
            "3600.001,u1,c",  # 30 min + 1 ms: a new session
            "10,NA,a",  # anonymous without a session: skipped
            "20,u2,",  # no product
        ],
    )
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(
        json.dumps({"time_col": "ts", "time_format": "epoch_s", "user_col": "uid"}),
        encoding="utf-8",
    )
    mapping = CsvMapping.build(mapping_file, {"product_col": "item", "time_col": None})
    out = tmp_path / "ds"
    import_dataset("csv", [clicks], out, mapping=mapping)
    assert list(iter_events(out)) == [
        _event("csv-0", "u1", "u1-1", "VIEW", "a", 0),
        _event("csv-1", "u1", "u1-1", "VIEW", "b", GAP_MS),
        _event("csv-2", "u1", "u1-2", "VIEW", "c", 2 * GAP_MS + 1),
    ]
    assert list(iter_purchases(out)) == []
    meta = _meta(out)
    assert meta["skipped"] == {"empty_product": 1, "empty_user": 1}
    assert meta["session_gap_ms"] == GAP_MS


@pytest.mark.parametrize(
    ("text", "fmt", "ms"),
    [
        ("1700000000123", "epoch_ms", 1_700_000_000_123),
        ("1700000000.5", "epoch_s", 1_700_000_000_500),
        ("1700000000", "epoch_s", 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", "iso8601", 1_700_000_000_000),
        ("2023-11-14 23:13:20.250+01:00", "iso8601", 1_700_000_000_250),
        ("2023-11-14T22:13:20", "iso8601", 1_700_000_000_000),
        ("14/11/2023 22:13", "%d/%m/%Y %H:%M", 1_699_999_980_000),
        ("", "epoch_ms", None),
        ("NaN", "epoch_s", None),
        ("12:00", "iso8601", None),
        ("2023-11-14", "%d/%m/%Y", None),
    ],
)
def test_parse_time(text: str, fmt: str, ms: int | None) -> None:
    assert parse_time(text, fmt) == ms


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"product_col": "p", "user_col": "u"}, "--time-col"),
        ({"time_col": "t", "product_col": "p", "user_col": "u", "time_format": "unix"}, "unix"),
        (
            {"time_col": "t", "product_col": "p", "user_col": "u", "cart_values": "view"},
            "both view_values and cart_values",
        ),
        ({"time_col": "t", "product_col": "p", "user_col": "u", "delimiter": "::"}, "delimiter"),
    ],
)
def test_bad_csv_mappings_are_refused(overrides: dict, match: str) -> None:
    with pytest.raises(ImportInputError, match=match):
        CsvMapping.build(None, overrides)


def test_unknown_key_in_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"time_column": "t"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown keys time_column"):
        CsvMapping.build(path, {})


# -- command line ----------------------------------------------------------------------------------


def test_cli_parses_dataset_import() -> None:
    args = cli.build_parser().parse_args(
        ["dataset", "import", "--format", "csv", "--out", "o", "a.csv", "b.csv"]
        + ["--time-col", "ts", "--view-values", "view,detail", "--session-gap-min", "45"]
    )
    assert (args.command, args.action, args.format, args.out) == (
        "dataset",
        "import",
        "csv",
        Path("o"),
    )
    assert args.inputs == [Path("a.csv"), Path("b.csv")]
    assert (args.time_col, args.view_values, args.session_gap_min) == ("ts", "view,detail", 45.0)
    assert cli.COMMANDS["dataset"] is cli.cmd_dataset


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--format", "csv", "--time-col", "nope", "--product-col", "p", "--user-col", "u"],
            "no column 'nope'",
        ),
        (["--format", "retailrocket"], "not a RetailRocket file"),
        (["--format", "diginetica", "--mapping", "m.json"], "--mapping is for --format csv only"),
    ],
)
def test_cli_exits_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clicks = _write(tmp_path / "clicks.csv", ["t,p,u", "0,a,b"])
    code = cli.main(["dataset", "import", "--out", str(tmp_path / "ds"), *argv, str(clicks)])
    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.strip().splitlines()
    assert message in line and "fatal" in line
    assert not (tmp_path / "ds").exists()


def test_cli_refuses_missing_and_parquet_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["dataset", "import", "--format", "retailrocket", "--out", str(tmp_path / "ds")]
    assert cli.main([*base, str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv: no such file" in capsys.readouterr().err
    parquet = tmp_path / "events.parquet"
    parquet.write_bytes(b"PAR1")
    assert cli.main([*base, str(parquet)]) == 2
    assert "Parquet input needs pyarrow" in capsys.readouterr().err


def test_cli_imports_the_diginetica_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = DIGINETICA / "sample_sessions_views_plus_purchases.csv"
    if not sessions.is_file():
        pytest.skip(f"DIGINETICA sample not found under {DIGINETICA}")
    categories = DIGINETICA / "product-categories.csv"
    out = tmp_path / "dg"
    argv = ["dataset", "import", "--format", "diginetica", "--out", str(out)]
    assert cli.main([*argv, str(sessions), str(categories)]) == 0
    summary = capsys.readouterr().out
    assert "12,391 views" in summary and "256 purchase lines" in summary
    meta = _meta(out)
    assert (meta["n_views"], meta["n_purchases"], meta["n_sessions"]) == (12_391, 256, 2_986)
    assert meta["n_skipped"] == 0 and meta["format"] == "diginetica"
    events, purchases = load_diginetica(sessions, categories)
    assert list(iter_events(out)) == events
    assert list(iter_purchases(out)) == purchases
    catalogue = read_catalogue(out)
    assert len(catalogue) == len({e["product_id"] for e in events + purchases})
    assert np.isnan(catalogue.prices).all()
    assert catalogue.popularity.sum() == pytest.approx(1.0)


def test_original_diginetica_views_are_the_samples(tmp_path: Path) -> None:
    """``sample_train-item-views.csv`` and ``train-purchases.csv`` (the original layout) give the
    sample's views: the same sessions, users (some known from purchases only), products,
    categories and times."""
    views = DIGINETICA / "sample_train-item-views.csv"
    if not views.is_file():
        pytest.skip(f"DIGINETICA sample not found under {DIGINETICA}")
    categories = DIGINETICA / "product-categories.csv"
    purchases = DIGINETICA / "train-purchases.csv"
    import_dataset("diginetica", [views, purchases, categories], tmp_path / "dg")
    sample, _ = load_diginetica(DIGINETICA / "sample_sessions_views_plus_purchases.csv", categories)

    def key(e: dict) -> tuple:
        return tuple(sorted((k, v) for k, v in e.items() if k != "event_id"))

    assert sorted(map(key, iter_events(tmp_path / "dg"))) == sorted(map(key, sample))


# -- session cutting -------------------------------------------------------------------------------


_times = st.one_of(st.integers(0, 6 * GAP_MS), st.integers(0, 6).map(lambda k: k * GAP_MS))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), _times), max_size=60))
def test_session_cutting_property(clicks: list[tuple[str, int]]) -> None:
    """Within a session consecutive gaps are at most 30 minutes; consecutive sessions of a user
    are more than 30 minutes apart, numbered 1, 2, ..."""
    cutter = SessionCutter(GAP_MS)
    sessions: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for user, t in sorted(clicks, key=lambda c: c[1]):
        sessions[user].setdefault(cutter.session(user, t), []).append(t)
    for user, by_session in sessions.items():
        assert list(by_session) == [f"{user}-{n}" for n in range(1, len(by_session) + 1)]
        for times in by_session.values():
            assert all(b - a <= GAP_MS for a, b in pairwise(times))
        for earlier, later in pairwise(by_session.values()):
            assert later[0] - earlier[-1] > GAP_MS
