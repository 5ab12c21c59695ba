from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from ingest.events import (
    MAX_FRAME_BYTES,
    RAW_CAP,
    Event,
    Rejection,
    normalise,
    same_payload,
)
from ingest.timestamps import TimestampError, format_timestamp, parse_timestamp

UTC = timezone.utc


def envelope(**overrides: object) -> str:
    base: dict[str, object] = {
        "id": "evt_1",
        "type": "grant.created",
        "createdAt": "2026-03-01T12:00:00.000Z",
        "data": {"grantId": "grnt_1", "agentId": "ag_1", "principalId": "user_1"},
    }
    base.update(overrides)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T12:00:00.000Z", datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)),
        ("2026-03-01T12:00:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T12:00:00.5Z", datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2026-03-01T12:00:00.123456789Z", datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-03-01T14:00:00+02:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T07:30:00-0430", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01 12:00:00", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01T12:00Z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
        ("2026-03-01t12:00:00z", datetime(2026, 3, 1, 12, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_variants_give_utc(text: str, expected: datetime) -> None:
    value = parse_timestamp(text)
    assert value == expected
    assert value.utcoffset() is not None and value.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "1700000000", "2026-03-01"],
)
def test_parse_timestamp_rejects_garbage(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(text)


def test_format_timestamp_is_utc_with_z() -> None:
    assert format_timestamp(datetime(2026, 3, 1, 12, tzinfo=UTC)) == "2026-03-01T12:00:00.000Z"
    assert (
        format_timestamp(datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC))
        == "2026-03-01T12:00:00.123456Z"
    )


def test_live_envelope_with_created_at() -> None:
    event = normalise(envelope())
    assert isinstance(event, Event)
    assert event.id == "evt_1"
    assert event.type == "grant.created"
    assert event.occurred_at == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert (event.grant_id, event.agent_id, event.principal_id) == ("grnt_1", "ag_1", "user_1")
    assert event.payload == envelope()


def test_documented_envelope_with_timestamp() -> None:
    text = envelope(createdAt=..., timestamp="2026-03-01T13:00:00+01:00")
    event = normalise(text)
    assert isinstance(event, Event)
    assert event.occurred_at == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_budget_threshold_pct_and_string_numbers() -> None:
    live = normalise(
        envelope(type="budget.threshold", data={"grantId": "g", "pct": 80, "remaining": "20.00"})
    )
    documented = normalise(
        envelope(
            type="budget.threshold",
            data={"grantId": "g", "percentage": 50.0, "remaining": 45.5, "initial": "100"},
        )
    )
    assert isinstance(live, Event) and isinstance(documented, Event)
    assert (live.percentage, live.remaining, live.initial) == (80.0, 20.0, None)
    assert (documented.percentage, documented.remaining, documented.initial) == (50.0, 45.5, 100.0)


def test_revoked_and_token_fields() -> None:
    revoked = normalise(
        envelope(type="grant.revoked", data={"grantId": "g", "revokedBy": "principal"})
    )
    live_revoked = normalise(envelope(type="grant.revoked", data={"grantId": "g", "cascade": True}))
    token = normalise(
        envelope(type="token.issued", data={"grantId": "g", "tokenId": "t", "method": "refresh"})
    )
    assert isinstance(revoked, Event) and revoked.revoked_by == "principal"
    assert isinstance(live_revoked, Event) and live_revoked.revoked_by is None
    assert isinstance(token, Event) and (token.token_id, token.method) == ("t", "refresh")


def test_integer_identifiers_are_archived_as_their_text_at_any_size() -> None:
    for number in (12, 2**64, 10**40):
        event = normalise(envelope(data={"grantId": number, "remaining": number}))
        assert isinstance(event, Event)
        assert event.grant_id == str(number)
        assert event.remaining == float(number)


def test_unknown_type_is_archived_with_null_typed_columns() -> None:
    text = envelope(type="anomaly.auto_revoked", data={"revokedGrants": ["g1", "g2"]})
    event = normalise(text)
    assert isinstance(event, Event)
    assert event.type == "anomaly.auto_revoked"
    assert event.grant_id is None and event.percentage is None
    assert json.loads(event.payload)["data"]["revokedGrants"] == ["g1", "g2"]


def test_unparseable_numbers_become_null_and_stay_in_payload() -> None:
    event = normalise(
        envelope(type="budget.threshold", data={"grantId": "g", "pct": True, "remaining": "n/a"})
    )
    assert isinstance(event, Event)
    assert event.percentage is None and event.remaining is None
    assert '"n/a"' in event.payload


def test_missing_data_is_an_event_without_typed_values() -> None:
    event = normalise(envelope(data=...))
    assert isinstance(event, Event)
    assert event.grant_id is None


@pytest.mark.parametrize(
    ("text", "reason", "event_id"),
    [
        ('{"id": "evt_1", broken', "invalid JSON", None),
        ("[1, 2, 3]", "JSON is not an object (got list)", None),
        ('"just a string"', "JSON is not an object (got str)", None),
        (envelope(id=...), "missing or empty 'id'", None),
        (envelope(id=""), "missing or empty 'id'", None),
        (envelope(id=42), "missing or empty 'id'", None),
        (envelope(type=...), "missing or empty 'type'", "evt_1"),
        (envelope(type=" "), "missing or empty 'type'", "evt_1"),
        (envelope(createdAt="not-a-time"), "unparseable createdAt", "evt_1"),
        (envelope(createdAt=1700000000), "unparseable createdAt: not a string", "evt_1"),
        (envelope(createdAt=...), "missing 'timestamp' or 'createdAt'", "evt_1"),
        (envelope(data="oops"), "'data' is not an object (got str)", "evt_1"),
        (envelope(data=None), "'data' is not an object (got NoneType)", "evt_1"),
        (envelope(data=[1]), "'data' is not an object (got list)", "evt_1"),
    ],
)
def test_rejections_have_specific_reasons(text: str, reason: str, event_id: str | None) -> None:
    result = normalise(text)
    assert isinstance(result, Rejection)
    assert result.reason.startswith(reason)
    assert result.event_id == event_id
    assert result.raw == text
    assert result.raw_length == len(text.encode())


def test_invalid_utf8_is_rejected_and_kept_readable() -> None:
    raw = b'{"id":"evt_9","type":"x","createdAt":"2026-03-01T12:00:00Z","data":{"s":"\xff\xfe"}}'
    result = normalise(raw.decode("utf-8", "surrogateescape"))
    assert isinstance(result, Rejection)
    assert result.reason == "invalid UTF-8 in frame"
    assert result.event_id == "evt_9"
    assert result.raw_length == len(raw)
    assert "\ufffd" in result.raw
    result.raw.encode("utf-8")  # storable everywhere


def test_real_replacement_character_is_valid() -> None:
    event = normalise(envelope(data={"note": "\ufffd ok"}))
    assert isinstance(event, Event)


def test_oversized_frame_is_rejected_with_capped_raw() -> None:
    text = envelope(data={"blob": "x" * (MAX_FRAME_BYTES + 10)})
    result = normalise(text)
    assert isinstance(result, Rejection)
    assert result.reason.startswith("frame larger than")
    assert result.raw_length == len(text)
    assert len(result.raw) == RAW_CAP
    assert result.event_id == "evt_1"  # read from the kept head


def test_same_payload_ignores_formatting_only() -> None:
    assert same_payload('{"a": 1, "b": 2}', '{"b":2,"a":1}')
    assert not same_payload('{"a": 1}', '{"a": 2}')
    assert not same_payload("{bad", "{bad2")
