import pytest

from ota_core.errors import InvalidVersion
from ota_core.versions import is_newer, parse_version


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("1.10.0", "1.9.0"),
        ("2.0.0", "1.99.99"),
        ("1.2.0", "1.2.0rc1"),
        ("1.2.0-rc.2", "1.2.0-rc.1"),
        ("1.0.1", "1.0"),
        ("2026.5.1", "2026.4.30"),
    ],
)
def test_version_order_is_numeric_not_textual(newer: str, older: str) -> None:
    assert is_newer(newer, older)
    assert not is_newer(older, newer)


def test_equal_versions_are_not_newer() -> None:
    assert not is_newer("1.0.0", "1.0")


@pytest.mark.parametrize("bad", ["", "banana", "1.0 beta", "x" * 65, "1.0.0; rm -rf /"])
def test_non_versions_are_refused(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        parse_version(bad)
