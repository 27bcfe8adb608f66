"""prepare, parse_time, format_time and invalid_error: events in, rows and reasons out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtis.config import StreamConfig
from rtis.errors import InvalidEvents
from rtis.ingest import (
    MAX_MS,
    Decoded,
    Invalid,
    Prepared,
    format_time,
    invalid_error,
    parse_time,
    prepare,
)

NOW = 1_796_314_800_000  # 2026-12-03T16:20:00Z
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "amount"],
    "properties": {
        "amount": {"type": "number", "maximum": 1000},
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"sku": {"type": "string"}}},
        },
        "odd key": {"type": "string"},
    },
}
CE = {"specversion": "1.0", "id": "1", "source": "/farm", "type": "harvest"}


def stream(schema: dict[str, Any] | None = None, **settings: Any) -> StreamConfig:
    validator = fastjsonschema.compile(schema) if schema is not None else None
    return StreamConfig(name="orders", validator=validator, schema=schema, **settings)


def run(
    events: list[Any], config: StreamConfig | None = None, *, ce: bool = False
) -> tuple[list[Prepared], list[Invalid]]:
    return prepare(Decoded(events, ce), config or stream(), NOW)


def problems(invalid: list[Invalid]) -> list[tuple[int, str, str]]:
    return [(i.index, i.path, i.message) for i in invalid]


# --------------------------------------------------------------------------- plain events


def test_a_plain_event_without_time_field_gets_arrival_time_and_no_key() -> None:
    ok, bad = run([{"a": 1}])
    assert bad == []
    assert ok == [Prepared(NOW, None, b'{"a":1}')]


def test_the_stored_data_is_the_event_serialised_with_orjson() -> None:
    event = {"a": [1, 2.5, None, True], "b": {"c": "é"}}
    ok, _ = run([event])
    assert orjson.loads(ok[0].data) == event


@pytest.mark.parametrize(
    ("value", "kind"),
    [([1], "an array"), ("x", "a string"), (3, "a number"), (None, "null"), (False, "a boolean")],
)
def test_a_non_object_event_is_invalid_at_the_root(value: Any, kind: str) -> None:
    ok, bad = run([{"a": 1}, value])
    assert len(ok) == 1
    assert problems(bad) == [(1, "$", f"expected a JSON object, got {kind}")]
    assert bad[0].data == orjson.dumps(value)


def test_event_time_comes_from_the_time_field() -> None:
    ok, bad = run(
        [{"ts": 1_700_000_000}, {"ts": "2026-12-03T16:20:00.5Z"}], stream(time_field="ts")
    )
    assert bad == []
    assert [p.time_ms for p in ok] == [1_700_000_000_000, NOW + 500]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({}, "missing"),
        ({"ts": None}, "missing"),
        ({"ts": "yesterday"}, "expected an RFC 3339 time"),
        ({"ts": True}, "got a boolean"),
        ({"ts": 1_700_000_000_000}, "milliseconds?"),
    ],
)
def test_a_missing_or_bad_time_field_is_invalid_at_its_path(
    event: dict[str, Any], reason: str
) -> None:
    _, bad = run([event], stream(time_field="ts"))
    assert [(i.index, i.path) for i in bad] == [(0, "$.ts")]
    assert reason in bad[0].message


def test_plain_dedupe_keys_keep_their_json_type_so_7_and_string_7_differ() -> None:
    ok, bad = run([{"id": 7}, {"id": "7"}, {"id": 'a"b'}], stream(dedupe_key="id"))
    assert bad == []
    assert [p.key for p in ok] == ["7", '"7"', '"a\\"b"']


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        (True, "got boolean true"),
        (1.5, "got number 1.5"),
        ([7], "got an array"),
    ],
)
def test_a_dedupe_key_must_be_a_string_or_an_integer(value: Any, reason: str) -> None:
    _, bad = run([{"id": value}], stream(dedupe_key="id"))
    assert [(i.path) for i in bad] == ["$.id"]
    assert reason in bad[0].message


def test_a_field_name_that_is_not_an_identifier_is_quoted_in_the_path() -> None:
    _, bad = run([{}], stream(dedupe_key="order id"))
    assert bad[0].path == '$["order id"]'


# --------------------------------------------------------------------------- schema


def test_schema_violations_of_several_events_are_all_reported_with_paths() -> None:
    events = [
        {"id": 1, "amount": 5},
        {"id": 2, "amount": "5"},
        {"amount": 5},
        {"id": 4, "amount": 5, "items": [{"sku": "a"}, {}, {"sku": 3}]},
        {"id": 5, "amount": 5000},
        {"id": 6, "amount": 5, "odd key": 1},
        {},
    ]
    ok, bad = run(events, stream(SCHEMA))
    assert len(ok) == 1
    assert problems(bad) == [
        (1, "$.amount", "must be number, got string '5'"),
        (2, "$.id", "required property is missing"),
        (3, "$.items[2].sku", "must be string, got number 3"),
        (4, "$.amount", "must be smaller than or equal to 1000, got number 5000"),
        (5, '$["odd key"]', "must be string, got number 1"),
        (6, "$", "required properties are missing: 'id', 'amount'"),
    ]


def test_an_event_with_several_problems_is_one_invalid_listing_them_all() -> None:
    config = stream(SCHEMA, time_field="ts", dedupe_key="id")
    _, bad = run([{"amount": 1}], config)
    assert len(bad) == 1
    assert bad[0].path == "$.id"
    assert bad[0].message.startswith("required property is missing; also $.ts: missing")
    assert "$.id: missing" in bad[0].message


def test_schema_defaults_are_stored() -> None:
    schema = {"type": "object", "properties": {"region": {"type": "string", "default": "eu"}}}
    ok, _ = run([{"a": 1}], stream(schema))
    assert orjson.loads(ok[0].data) == {"a": 1, "region": "eu"}


def test_an_event_too_deep_to_serialise_is_invalid_not_an_error() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    ok, bad = run([{"a": deep}])
    assert ok == []
    assert problems(bad)[0][:2] == (0, "$")
    assert "cannot be stored as JSON" in bad[0].message
    assert isinstance(orjson.loads(bad[0].data), str)


def test_invalid_detail_is_index_path_and_message() -> None:
    _, bad = run([{"id": 1, "amount": "x"}], stream(SCHEMA))
    assert bad[0].detail() == {"index": 0, "path": "$.amount", "message": bad[0].message}
    assert bad[0].data == b'{"id":1,"amount":"x"}'


# --------------------------------------------------------------------------- CloudEvents


def test_a_cloudevent_key_is_source_and_id_whatever_dedupe_key_says() -> None:
    ok, bad = run([{**CE, "n": 1}], stream(dedupe_key="n", time_field="ts"), ce=True)
    assert bad == []
    assert ok[0].key == '["/farm","1"]'
    assert ok[0].time_ms == NOW


def test_a_cloudevent_key_never_equals_a_plain_key() -> None:
    ce_ok, _ = run([{**CE, "id": "7", "source": "7"}], ce=True)
    plain_ok, _ = run([{"id": "7"}, {"id": 7}, {"id": '["7","7"]'}], stream(dedupe_key="id"))
    plain_keys = {p.key for p in plain_ok}
    assert len(plain_keys) == 3
    assert ce_ok[0].key == '["7","7"]'
    assert ce_ok[0].key not in plain_keys


def test_a_cloudevent_time_attribute_is_its_event_time() -> None:
    ok, _ = run([{**CE, "time": "2026-12-03T17:20:00.250+01:00"}], ce=True)
    assert ok[0].time_ms == NOW + 250


def test_cloudevents_attributes_are_checked_together() -> None:
    events = [
        {"specversion": "0.3", "id": "", "source": 5, "time": 1_700_000_000},
        {"data": 1},
        {**CE, "time": "2026-02-30T00:00:00Z"},
    ]
    _, bad = run(events, ce=True)
    assert [(i.index, i.path) for i in bad] == [
        (0, "$.specversion"),
        (1, "$.specversion"),
        (2, "$.time"),
    ]
    assert bad[0].message == (
        "must be \"1.0\", got string '0.3'; also $.id: must be a non-empty string, got string ''; "
        "$.source: must be a non-empty string, got number 5; $.type: required CloudEvents "
        "attribute is missing; $.time: expected an RFC 3339 string, got number 1700000000"
    )
    assert bad[1].message.startswith("required CloudEvents attribute is missing")
    assert "invalid date" in bad[2].message


def test_the_schema_applies_to_the_structured_cloudevent() -> None:
    schema = {"type": "object", "properties": {"data": {"required": ["kg"]}}}
    ok, bad = run([{**CE, "data": {"kg": 1}}, {**CE, "data": {}}], stream(schema), ce=True)
    assert len(ok) == 1
    assert problems(bad) == [(1, "$.data.kg", "required property is missing")]


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (0, 0),
        (1_796_314_800, NOW),
        (1_796_314_800.123, NOW + 123),
        (1_796_314_800.9999, NOW + 1000),
        ("2026-12-03T16:20:00Z", NOW),
        ("2026-12-03t16:20:00z", NOW),
        ("2026-12-03 16:20:00Z", NOW),
        ("2026-12-03T16:20:00.1Z", NOW + 100),
        ("2026-12-03T16:20:00.123456789Z", NOW + 123),
        ("2026-12-03T18:20:00+02:00", NOW),
        ("2026-12-03T10:50:00.5-05:30", NOW + 500),
        ("1970-01-01T00:00:00Z", 0),
        ("9999-12-31T23:59:59.999Z", MAX_MS),
        ("2016-12-31T23:59:60Z", 1_483_228_800_000),
    ],
)
def test_parse_time_accepts_epoch_seconds_and_rfc3339(value: Any, ms: int) -> None:
    assert parse_time(value) == ms


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "boolean"),
        (None, "got null"),
        ([1], "an array"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (-1, "1970..9999"),
        (-0.5, "1970..9999"),
        (1e20, "1970..9999"),
        (1_796_314_800_000, "milliseconds?"),
        ("", "RFC 3339"),
        ("2026-12-03", "RFC 3339"),
        ("2026-12-03T16:20:00", "'Z' or an offset"),
        ("2026-12-03T16:20:00.Z", "RFC 3339"),
        ("2026-12-03T16:20:00,5Z", "RFC 3339"),
        ("2026-13-03T16:20:00Z", "invalid date"),
        ("2026-12-03T24:00:00Z", "out of range"),
        ("2026-12-03T16:20:00+24:00", "offset out of range"),
        ("1969-12-31T23:59:59Z", "1970..9999"),
        ("1970-01-01T00:30:00+01:00", "1970..9999"),
        ("\uff12\uff10\uff12\uff16-12-03T16:20:00Z", "RFC 3339"),  # non-ASCII digits
        ("+026-12-03T16:20:00Z", "RFC 3339"),
        ("2026-12-03T16:20:00.1" + "0" * 100 + "Z", "RFC 3339"),
    ],
)
def test_parse_time_refuses_bad_values_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_time(value)
    assert reason in str(e.value)


def test_format_time_is_rfc3339_utc_with_exactly_three_decimals() -> None:
    assert format_time(NOW + 123) == "2026-12-03T16:20:00.123Z"
    assert format_time(NOW) == "2026-12-03T16:20:00.000Z"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(MAX_MS) == "9999-12-31T23:59:59.999Z"


@given(st.integers(min_value=0, max_value=MAX_MS))
def test_format_time_round_trips_through_parse_time(ms: int) -> None:
    text = format_time(ms)
    assert len(text) == 24
    assert parse_time(text) == ms


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
    ),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_parse_time_agrees_with_datetime_for_any_offset(moment: datetime, minutes: int) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=minutes)))
    expected = (moment - EPOCH) // timedelta(milliseconds=1)
    assert parse_time(local.isoformat()) == expected


# --------------------------------------------------------------------------- 422


def test_invalid_error_counts_invalid_events_and_lists_their_details() -> None:
    _, bad = run([{"id": 1, "amount": 1}, {"amount": 1}, {"id": 1, "amount": "x"}], stream(SCHEMA))
    error = invalid_error("orders", bad, 3)
    assert isinstance(error, InvalidEvents)
    assert error.status == 422
    assert error.code == "invalid_events"
    assert error.message == "2 of 3 events are invalid in stream 'orders'"
    assert error.details == [
        {"index": 1, "path": "$.id", "message": "required property is missing"},
        {"index": 2, "path": "$.amount", "message": "must be number, got string 'x'"},
    ]


def test_invalid_error_caps_details_at_100_and_says_so() -> None:
    _, bad = run([1] * 250)
    error = invalid_error("orders", bad, 250)
    assert len(error.details) == 100
    assert error.details[-1]["index"] == 99
    assert error.message == (
        "250 of 250 events are invalid in stream 'orders'; details list the first 100"
    )
