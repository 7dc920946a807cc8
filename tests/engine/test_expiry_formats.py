from datetime import UTC, datetime, timedelta, timezone

import pytest

from controller.engine.expiry import expires_at_of, format_annotation, format_label, parse_expires_at

T18 = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 11, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "source", "expected"),
    [
        ("2026-11-23T18:00:00Z", "annotation", T18),
        ("2026-11-23T18:00:00z", "annotation", T18),
        ("2026-11-23T19:00:00+01:00", "annotation", T18),
        ("2026-11-23T18:00:00.123456789Z", "annotation", T18.replace(microsecond=123456)),
        ("2026-11-23", "annotation", MIDNIGHT),
        ("2026-11-23", "label", MIDNIGHT),
        ("2026-11-23T18-00-00Z", "label", T18),
        ("2026-11-23T18-00-00Z", "annotation", T18),
        (str(int(T18.timestamp())), "label", T18),
        (str(int(T18.timestamp())), "annotation", T18),
    ],
)
def test_accepted_formats(value, source, expected):
    parsed = parse_expires_at(value, source=source)
    assert parsed == expected
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "source", "hint"),
    [
        ("2026-11-23T18:00:00Z", "label", "2026-11-23T18-00-00Z"),  # labels cannot hold ':'
        ("2026-11-23T18:00:00", "annotation", "RFC 3339"),  # no time zone
        ("tomorrow", "annotation", "RFC 3339"),
        ("2026-13-01", "label", "not a valid time"),
        ("23/11/2026", "label", "Unix seconds"),
        ("", "annotation", "RFC 3339"),
    ],
)
def test_rejected_formats_say_what_is_accepted(value, source, hint):
    with pytest.raises(ValueError, match=hint):
        parse_expires_at(value, source=source)


def test_formats_round_trip_through_the_parser():
    moment = datetime(2026, 11, 23, 18, 30, 15, 999, tzinfo=timezone(timedelta(hours=2)))
    assert format_annotation(moment) == "2026-11-23T16:30:15Z"
    assert format_label(moment) == "2026-11-23T16-30-15Z"
    assert parse_expires_at(format_label(moment), source="label") == moment.replace(microsecond=0)
    assert parse_expires_at(format_annotation(moment), source="annotation") == moment.replace(microsecond=0)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"metadata": {"annotations": {"expires_at": "2026-11-23T18:00:00Z"}}}, (T18, None)),
        ({"metadata": {"labels": {"expires_at": "2026-11-23"}}}, (MIDNIGHT, None)),
        # The annotation wins over a label of the same key.
        (
            {
                "metadata": {
                    "labels": {"expires_at": "2026-11-23"},
                    "annotations": {"expires_at": "2026-11-23T18:00:00Z"},
                }
            },
            (T18, None),
        ),
        ({"metadata": {}}, (None, None)),
        (
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {},
                "spec": {"template": {"metadata": {"labels": {"expires_at": "2026-11-23"}}}},
            },
            (MIDNIGHT, None),
        ),
    ],
)
def test_expires_at_of(manifest, expected):
    assert expires_at_of(manifest, key="expires_at") == expected


def test_expires_at_of_reports_unparseable_values():
    moment, error = expires_at_of({"metadata": {"labels": {"ttl": "soon"}}}, key="ttl")
    assert moment is None and "Unix seconds" in error
