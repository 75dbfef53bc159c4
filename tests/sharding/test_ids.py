import pytest

from apps.sharding.ids import InvalidId, bucket_of, new_id, parse_id


@pytest.mark.parametrize("bucket", [0, 1, 511, 1023, 4095])
def test_id_carries_its_bucket(bucket: int) -> None:
    value = new_id(bucket)
    assert bucket_of(value) == bucket
    assert value.version == 7
    assert parse_id(str(value)) == value


def test_ids_are_unique_and_time_ordered_across_milliseconds() -> None:
    ids = [new_id(3) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)


def test_bucket_must_fit_in_twelve_bits() -> None:
    with pytest.raises(ValueError, match="bucket"):
        new_id(4096)


@pytest.mark.parametrize(
    "raw", ["", "nope", "123", "66e05d32-c00c-488e-8c56-c5f28ee1c617", "00000000-0000-0000-0000-000000000000"]
)
def test_anything_we_never_issued_is_not_an_id(raw: str) -> None:
    with pytest.raises(InvalidId):
        parse_id(raw)
