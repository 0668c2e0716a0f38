import pytest

from ota_core.errors import InvalidDeviceId, InvalidInput
from ota_core.topics import TopicKind, TopicScheme


def test_topics_are_built_and_parsed_back() -> None:
    scheme = TopicScheme()
    topic = scheme.announce("dev-1")
    assert str(topic) == "ota/v1/devices/dev-1/announce"
    assert scheme.parse(str(topic)) == topic
    assert str(scheme.offer("a.b_c")) == "ota/v1/devices/a.b_c/offer"
    assert scheme.filter(TopicKind.STATUS) == "ota/v1/devices/+/status"


def test_custom_prefix() -> None:
    scheme = TopicScheme("fleet/eu/ota")
    assert str(scheme.status("d")) == "fleet/eu/ota/devices/d/status"
    assert scheme.parse("fleet/eu/ota/devices/d/status").device_id == "d"


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "#", "a+b", "x" * 65, "dév", "a b", "a\x00"])
def test_unsafe_device_ids_never_become_topics(device_id: str) -> None:
    with pytest.raises(InvalidDeviceId):
        TopicScheme().offer(device_id)


@pytest.mark.parametrize(
    "topic",
    [
        "other/devices/d/announce",
        "ota/v1/devices/d/reboot",
        "ota/v1/devices/d",
        "ota/v1/devices/a/b/announce",
    ],
)
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidInput):
        TopicScheme().parse(topic)


@pytest.mark.parametrize("prefix", ["", "ota/+", "ota/#", "/ota", "ota//v1"])
def test_prefix_with_wildcards_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidInput):
        TopicScheme(prefix)
