import json

import pytest

from ota_core.catalog import Catalog
from ota_core.errors import Conflict
from ota_core.models import Announcement, ErrorReply, UpdateOffer, UpToDate, parse_offer
from ota_core.offers import OfferBuilder
from ota_core.signing import ReleaseSigner
from ota_core.verify import OfferChecker

from .conftest import make_release


def test_catalog_orders_by_version_not_insertion(catalog: Catalog) -> None:
    assert [r.version for r in catalog] == ["2.0.0", "1.10.0", "1.9.0", "1.0.0"]
    assert catalog.by_build["build-1090"].filename == "ota-1.9.0.zip"
    assert catalog.next_counter() == 5


def test_catalog_refuses_duplicates(catalog: Catalog) -> None:
    with pytest.raises(Conflict, match="build_id"):
        catalog.check_can_add("build-1000", "new.zip", 9)
    with pytest.raises(Conflict, match="filename"):
        catalog.check_can_add("new", "ota-1.0.0.zip", 9)
    with pytest.raises(Conflict, match="counter"):
        catalog.check_can_add("new", "new.zip", 2)
    catalog.check_can_add("new", "new.zip", 9)


def test_update_offer_carries_stored_signatures_and_verifies(
    catalog: Catalog, signer: ReleaseSigner
) -> None:
    ann = Announcement.from_bytes(b'{"build_id":"build-1000","request_id":"req-7"}')
    offer = OfferBuilder().for_announcement(catalog, "dev-9", ann)
    assert isinstance(offer, UpdateOffer)
    wire = json.loads(offer.to_bytes())
    assert wire["status"] == "update-available"
    assert wire["url"] == "/packages/ota-1.9.0.zip"
    assert {
        "device_id",
        "request_id",
        "build_id",
        "version",
        "url",
        "size",
        "checksum",
        "signature",
        "manifest",
        "manifest_signature",
        "key_id",
    } <= wire.keys()
    parsed = parse_offer(offer.to_bytes())
    assert isinstance(parsed, UpdateOffer)
    manifest = OfferChecker(signer.verifier, "dev-9", "1.0.0").check(parsed, "req-7")
    assert manifest.build_id == "build-1090"


def test_package_base_url_makes_absolute_urls(catalog: Catalog) -> None:
    ann = Announcement.from_bytes(b'{"build_id":"build-1000"}')
    offer = OfferBuilder("https://cdn.example.test/fw/").for_announcement(catalog, "d", ann)
    assert isinstance(offer, UpdateOffer)
    assert offer.url == "https://cdn.example.test/fw/packages/ota-1.9.0.zip"


def test_up_to_date_and_unknown_build(catalog: Catalog) -> None:
    builder = OfferBuilder()
    up = builder.for_announcement(
        catalog, "d", Announcement.from_bytes(b'{"build_id":"build-1090"}')
    )
    assert isinstance(up, UpToDate) and up.version == "1.9.0" and up.build_id == "build-1090"
    err = builder.for_announcement(
        catalog, "d", Announcement.from_bytes(b'{"build_id":"mystery","request_id":"q"}')
    )
    assert isinstance(err, ErrorReply)
    assert (err.error, err.request_id, err.device_id) == ("unknown-build", "q", "d")


def test_same_announcement_gives_same_offer(catalog: Catalog) -> None:
    ann = Announcement.from_bytes(b'{"build_id":"build-1000","request_id":"r"}')
    builder = OfferBuilder()
    assert (
        builder.for_announcement(catalog, "d", ann).to_bytes()
        == builder.for_announcement(catalog, "d", ann).to_bytes()
    )


def test_catalog_revision_is_kept(signer: ReleaseSigner) -> None:
    cat = Catalog.of([make_release(signer, "b", "1.0.0", 1)], revision=42)
    assert cat.revision == 42 and len(cat) == 1
