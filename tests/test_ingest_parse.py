"""decode_body: body formats, gzip, limits and where a malformed body is wrong."""

from __future__ import annotations

import base64
import gzip
import tracemalloc
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtis.config import StreamConfig
from rtis.errors import BadRequest, PayloadTooLarge, RtisError, UnsupportedMediaType
from rtis.ingest import Decoded, Limits, decode_body, prepare

LIMITS = Limits(max_body_bytes=1 << 20, max_batch_events=100)


def decode(
    body: bytes,
    content_type: str | None = "application/json",
    *,
    encoding: str | None = None,
    headers: Mapping[str, str] | None = None,
    limits: Limits = LIMITS,
) -> Decoded:
    return decode_body(
        body,
        content_type=content_type,
        content_encoding=encoding,
        headers=headers or {},
        limits=limits,
    )


CE = {"specversion": "1.0", "id": "1", "source": "/farm", "type": "harvest", "data": {"kg": 3}}


# --------------------------------------------------------------------------- JSON


def test_a_json_object_is_one_event() -> None:
    assert decode(b'{"a": 1}') == Decoded([{"a": 1}], False)


def test_a_json_array_is_a_batch_in_request_order() -> None:
    assert decode(b'[{"a": 1}, {"a": 2}, 3]').events == [{"a": 1}, {"a": 2}, 3]


def test_an_empty_json_array_is_zero_events() -> None:
    assert decode(b"[]") == Decoded([], False)


@pytest.mark.parametrize("content_type", [None, "", "Application/JSON; charset=utf-8"])
def test_absent_empty_or_parameterised_content_type_means_json(content_type: str | None) -> None:
    assert decode(b'{"a": 1}', content_type).events == [{"a": 1}]


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"12", "a number"), (b'"x"', "a string"), (b"null", "null"), (b"true", "a boolean")],
)
def test_a_json_scalar_body_is_a_bad_request_naming_its_kind(body: bytes, kind: str) -> None:
    with pytest.raises(BadRequest) as e:
        decode(body)
    assert e.value.message == f"expected a JSON object or an array of objects, got {kind}"


def test_malformed_json_says_line_column_and_char() -> None:
    with pytest.raises(BadRequest) as e:
        decode(b'{\n  "a": 1,\n  "b": tru\n}')
    assert e.value.status == 400
    assert "line 3 column" in e.value.message
    assert "(char " in e.value.message
    assert "true" in e.value.message


def test_invalid_utf8_says_where_the_bad_byte_is() -> None:
    with pytest.raises(BadRequest) as e:
        decode(b'{"a": "ok",\n "b": "\xff"}')
    assert "line 2 column 8 (byte 19)" in e.value.message
    assert "UTF-8" in e.value.message


def test_an_empty_json_body_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="body is empty"):
        decode(b"")


# --------------------------------------------------------------------------- NDJSON


@pytest.mark.parametrize(
    "content_type", ["application/x-ndjson", "application/jsonl", "application/ndjson"]
)
def test_ndjson_is_one_value_per_non_blank_line(content_type: str) -> None:
    body = b'{"a": 1}\n\n  \r\n{"a": 2}\r\n[1]\n'
    assert decode(body, content_type) == Decoded([{"a": 1}, {"a": 2}, [1]], False)


def test_an_empty_ndjson_body_is_zero_events() -> None:
    assert decode(b"", "application/x-ndjson").events == []


def test_malformed_ndjson_names_the_one_based_line() -> None:
    body = b'{"a": 1}\n\n{"a": }\n{"a": 3}\n'
    with pytest.raises(BadRequest) as e:
        decode(body, "application/x-ndjson")
    assert e.value.message.startswith("line 3: malformed JSON at column 7: ")


def test_ndjson_over_the_batch_limit_is_refused_before_parsing() -> None:
    # The last line is malformed: the count is checked first, so 413, not 400.
    body = b'{"a": 1}\n' * 101 + b"{oops\n"
    with pytest.raises(PayloadTooLarge) as e:
        decode(body, "application/x-ndjson")
    assert e.value.code == "too_many_events"
    assert e.value.message == "batch of 102 events exceeds max_batch_events = 100"


def test_blank_ndjson_lines_do_not_count_towards_the_batch_limit() -> None:
    body = b'{"a": 1}\n\n\n' * 100
    assert len(decode(body, "application/x-ndjson").events) == 100


# --------------------------------------------------------------------------- limits


def test_a_json_array_over_the_batch_limit_is_413_too_many_events() -> None:
    with pytest.raises(PayloadTooLarge) as e:
        decode(orjson.dumps([{}] * 101))
    assert e.value.status == 413
    assert e.value.code == "too_many_events"
    assert e.value.message == "batch of 101 events exceeds max_batch_events = 100"


def test_a_batch_of_exactly_the_limit_is_accepted() -> None:
    assert len(decode(orjson.dumps([{}] * 100)).events) == 100


def test_a_body_over_max_body_bytes_is_413() -> None:
    with pytest.raises(PayloadTooLarge) as e:
        decode(b" " * 11 + b"{}", limits=Limits(max_body_bytes=12, max_batch_events=10))
    assert e.value.code == "too_large"


# --------------------------------------------------------------------------- gzip


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "GZIP"])
def test_gzip_bodies_are_decompressed(encoding: str) -> None:
    body = gzip.compress(b'[{"a": 1}, {"a": 2}]')
    assert decode(body, encoding=encoding).events == [{"a": 1}, {"a": 2}]


def test_concatenated_gzip_members_are_one_body() -> None:
    body = gzip.compress(b'{"a": 1}\n') + gzip.compress(b'{"a": 2}\n')
    assert decode(body, "application/x-ndjson", encoding="gzip").events == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("encoding", ["identity", "", None])
def test_identity_or_absent_encoding_is_taken_as_is(encoding: str | None) -> None:
    assert decode(b"{}", encoding=encoding).events == [{}]


def test_corrupt_gzip_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="not valid gzip"):
        decode(b"\x1f\x8b\x08\x00garbage-garbage", encoding="gzip")


def test_truncated_gzip_is_a_bad_request() -> None:
    body = gzip.compress(b'{"a": "' + b"x" * 1000 + b'"}')
    with pytest.raises(BadRequest, match="truncated"):
        decode(body[:-12], encoding="gzip")


def _gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


def test_a_gzip_bomb_stops_at_the_cap_without_allocating_its_full_size() -> None:
    cap = 1 << 20
    bomb = _gzip_bomb(64 << 20)  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < cap
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as e:
            decode(bomb, encoding="gzip", limits=Limits(max_body_bytes=cap, max_batch_events=10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.message == (
        f"body of more than {cap} bytes after gzip exceeds max_body_bytes = {cap}"
    )
    assert peak < 4 * cap


def test_gzip_exactly_at_the_cap_is_accepted() -> None:
    payload = b'{"a": "' + b"x" * 93 + b'"}'
    assert len(payload) == 102
    limits = Limits(max_body_bytes=102, max_batch_events=10)
    assert decode(gzip.compress(payload), encoding="gzip", limits=limits).events == [
        {"a": "x" * 93}
    ]
    with pytest.raises(PayloadTooLarge):
        decode(gzip.compress(payload + b" "), encoding="gzip", limits=limits)


# --------------------------------------------------------------------------- 415


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, br"])
def test_other_content_encodings_are_415_naming_the_encoding(encoding: str) -> None:
    with pytest.raises(UnsupportedMediaType) as e:
        decode(b"{}", encoding=encoding)
    assert e.value.status == 415
    assert repr(encoding) in e.value.message


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
def test_other_content_types_are_415_listing_the_supported_ones(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as e:
        decode(b"{}", content_type)
    media = content_type.split(";")[0]
    assert e.value.message == (
        f"content type '{media}' is not supported; use application/json, "
        "application/x-ndjson, application/cloudevents+json or "
        "application/cloudevents-batch+json"
    )


# --------------------------------------------------------------------------- CloudEvents


def test_a_structured_cloudevent_is_one_cloudevents_event() -> None:
    decoded = decode(orjson.dumps(CE), "application/cloudevents+json; charset=utf-8")
    assert decoded == Decoded([CE], True)


def test_a_structured_cloudevent_must_be_a_json_object() -> None:
    with pytest.raises(BadRequest, match="cloudevents-batch"):
        decode(orjson.dumps([CE]), "application/cloudevents+json")


def test_a_cloudevents_batch_is_an_array_of_structured_events() -> None:
    decoded = decode(orjson.dumps([CE, {**CE, "id": "2"}]), "application/cloudevents-batch+json")
    assert decoded.cloudevents
    assert [e["id"] for e in decoded.events] == ["1", "2"]


def test_a_cloudevents_batch_must_be_an_array() -> None:
    with pytest.raises(BadRequest, match="expected a JSON array of CloudEvents, got an object"):
        decode(orjson.dumps(CE), "application/cloudevents-batch+json")


def test_a_cloudevents_batch_over_the_limit_is_413() -> None:
    with pytest.raises(PayloadTooLarge, match="batch of 101 events"):
        decode(orjson.dumps([CE] * 101), "application/cloudevents-batch+json")


BINARY_HEADERS = {
    "CE-SpecVersion": "1.0",
    "ce-id": "42",
    "Ce-Source": "/farm/7",
    "ce-type": "harvest",
    "ce-time": "2026-12-03T16:20:00Z",
    "ce-comment": "caf%C3%A9",
    "Content-Type": "ignored here",
    "X-Other": "no",
}


def test_binary_mode_with_json_data_builds_the_structured_event_from_ce_headers() -> None:
    decoded = decode(b'{"kg": 3}', "application/json", headers=BINARY_HEADERS)
    assert decoded == Decoded(
        [
            {
                "specversion": "1.0",
                "id": "42",
                "source": "/farm/7",
                "type": "harvest",
                "time": "2026-12-03T16:20:00Z",
                "comment": "café",
                "datacontenttype": "application/json",
                "data": {"kg": 3},
            }
        ],
        True,
    )


def test_binary_mode_parses_any_plus_json_content_type_as_json_data() -> None:
    decoded = decode(b"[1, 2]", "application/vnd.farm+json", headers=BINARY_HEADERS)
    assert decoded.events[0]["data"] == [1, 2]
    assert decoded.events[0]["datacontenttype"] == "application/vnd.farm+json"


def test_binary_mode_with_text_data_keeps_it_as_a_string() -> None:
    decoded = decode(b"7 kg of pears", "text/plain; charset=utf-8", headers=BINARY_HEADERS)
    event: dict[str, Any] = decoded.events[0]
    assert event["data"] == "7 kg of pears"
    assert event["datacontenttype"] == "text/plain; charset=utf-8"
    assert "data_base64" not in event


def test_binary_mode_with_non_utf8_data_keeps_it_as_data_base64() -> None:
    raw = b"\x89PNG\xff\x00"
    decoded = decode(raw, "image/png", headers=BINARY_HEADERS)
    event: dict[str, Any] = decoded.events[0]
    assert event["data_base64"] == base64.b64encode(raw).decode()
    assert "data" not in event


def test_binary_mode_with_malformed_json_data_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="line 1 column"):
        decode(b'{"kg": }', "application/json", headers=BINARY_HEADERS)


def test_without_ce_specversion_ce_headers_do_not_make_a_cloudevent() -> None:
    headers = {k: v for k, v in BINARY_HEADERS.items() if k != "CE-SpecVersion"}
    assert decode(b'{"kg": 3}', headers=headers) == Decoded([{"kg": 3}], False)


# --------------------------------------------------------------------------- hostile input


@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**63 - 1)
            | st.floats()
            | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
            max_leaves=12,
        ).map(orjson.dumps),
    ),
    content_type=st.sampled_from(
        [
            None,
            "application/json",
            "application/x-ndjson",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "text/plain",
            "image/png",
        ]
    ),
    binary=st.booleans(),
    gzipped=st.booleans(),
)
def test_any_body_either_decodes_and_prepares_or_raises_an_rtis_error(
    body: bytes, content_type: str | None, binary: bool, gzipped: bool
) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1"} if binary else {}
    limits = Limits(max_body_bytes=1000, max_batch_events=5)
    config = StreamConfig(name="s", time_field="t", dedupe_key="k")
    try:
        decoded = decode(
            gzip.compress(body) if gzipped else body,
            content_type,
            encoding="gzip" if gzipped else None,
            headers=headers,
            limits=limits,
        )
    except RtisError as e:
        assert 400 <= e.status < 500
        return
    ok, bad = prepare(decoded, config, 0)
    assert len(ok) + len(bad) == len(decoded.events)
