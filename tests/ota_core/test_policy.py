import pytest

from ota_core.catalog import Catalog
from ota_core.errors import UnknownBuild
from ota_core.policy import DeviceFacts, decide


def facts(build_id: str, **kw: str) -> DeviceFacts:
    return DeviceFacts(device_id="dev-1", build_id=build_id, **kw)


def test_generic_device_gets_newest_generic_release(catalog: Catalog) -> None:
    decision = decide(catalog, facts("build-1000"))
    assert decision.current_version == "1.0.0"
    assert decision.release is not None and decision.release.build_id == "build-1090"


def test_hardware_specific_release_goes_to_matching_hardware_only(catalog: Catalog) -> None:
    match = decide(catalog, facts("build-1000", hardware="board-a")).release
    other = decide(catalog, facts("build-1000", hardware="board-b")).release
    assert match is not None and match.version == "1.10.0"
    assert other is not None and other.version == "1.9.0"


def test_channel_specific_release_goes_to_that_channel_only(catalog: Catalog) -> None:
    beta = decide(catalog, facts("build-1000", channel="beta")).release
    stable = decide(catalog, facts("build-1000", channel="stable")).release
    assert beta is not None and beta.version == "2.0.0"
    assert stable is not None and stable.version == "1.9.0"


def test_device_on_newest_fitting_release_is_up_to_date(catalog: Catalog) -> None:
    decision = decide(catalog, facts("build-1090"))
    assert decision.release is None
    assert decision.current_version == "1.9.0"


def test_known_build_wins_over_announced_version(catalog: Catalog) -> None:
    # The catalog knows build-1090 is 1.9.0; a device claiming 0.1 still is not offered 1.0.0.
    decision = decide(catalog, facts("build-1090", version="0.1"))
    assert decision.current_version == "1.9.0"
    assert decision.release is None


def test_unknown_build_uses_announced_version(catalog: Catalog) -> None:
    decision = decide(catalog, facts("factory-image", version="1.5.0"))
    assert decision.release is not None and decision.release.version == "1.9.0"


def test_device_newer_than_catalog_is_never_downgraded(catalog: Catalog) -> None:
    decision = decide(
        catalog, facts("dev-build", version="9.0.0", hardware="board-a", channel="beta")
    )
    assert decision.release is None


def test_unknown_build_without_version_is_an_error(catalog: Catalog) -> None:
    with pytest.raises(UnknownBuild):
        decide(catalog, facts("nobody-knows"))


def test_allowed_hook_narrows_the_choice(catalog: Catalog) -> None:
    decision = decide(catalog, facts("build-1000"), allowed=lambda r, d: r.version != "1.9.0")
    assert decision.release is None  # 1.9.0 is the only fitting candidate, and it is withheld


def test_empty_catalog_with_version_is_up_to_date() -> None:
    decision = decide(Catalog(), facts("b1", version="1.0.0"))
    assert decision.release is None and decision.current_version == "1.0.0"
