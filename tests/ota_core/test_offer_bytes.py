"""The bridge's fast offer serialisation gives exactly the model path's bytes."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ota_core.envelope import OfferEnvelope, OfferSigner
from ota_core.models import UpdateOffer, parse_offer
from ota_core.offers import OfferBuilder
from ota_core.signing import ReleaseSigner

from .conftest import make_release

# The id alphabets (ota_core.identifiers): device ids are [A-Za-z0-9._-], request ids
# any printable ASCII but space — quotes and backslashes included, which JSON escapes.
device_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
request_ids = st.none() | st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128
)
SIGNER = OfferSigner.generate()


def builders() -> st.SearchStrategy[OfferBuilder]:
    return st.builds(
        OfferBuilder,
        package_base_url=st.sampled_from(["", "https://cdn.example.com/fw", "http://h:8000/"]),
        offer_signer=st.sampled_from([None, SIGNER]),
        clock=st.just(lambda: 1_764_067_200.0),
    )


@settings(max_examples=300)
@given(builder=builders(), device_id=device_ids, request_id=request_ids, which=st.integers(0, 1))
def test_update_offer_bytes_equal_the_models_bytes(
    signer: ReleaseSigner, builder: OfferBuilder, device_id: str, request_id: str | None, which: int
) -> None:
    release = [
        make_release(signer, "build-1090", "1.9.0", 2),
        make_release(signer, "build-1100", "1.10.0", 3, hardware="board-a", channel="beta"),
    ][which]
    fast = builder.update_offer_bytes(release, device_id, request_id)
    slow = builder.update_offer(release, device_id, request_id).to_bytes()
    assert fast == slow
    parsed = parse_offer(fast)  # and a device reads it back whole
    assert isinstance(parsed, UpdateOffer)
    assert (parsed.device_id, parsed.request_id, parsed.build_id) == (
        device_id, request_id, release.build_id,
    )


def test_template_cache_follows_the_release(signer: ReleaseSigner) -> None:
    builder = OfferBuilder()
    one = make_release(signer, "build-1090", "1.9.0", 2)
    two = make_release(signer, "build-1100", "1.10.0", 3)
    assert json.loads(builder.update_offer_bytes(one, "d", None))["build_id"] == "build-1090"
    assert json.loads(builder.update_offer_bytes(two, "d", None))["build_id"] == "build-1100"
    assert json.loads(builder.update_offer_bytes(one, "d", None))["build_id"] == "build-1090"


def test_a_rotated_offer_key_signs_with_the_new_key(signer: ReleaseSigner) -> None:
    release = make_release(signer, "build-1090", "1.9.0", 2)
    builder = OfferBuilder(offer_signer=SIGNER)
    builder.update_offer_bytes(release, "d", None)  # cached under the old key
    rotated = builder.with_signer(OfferSigner.generate())
    offer = json.loads(rotated.update_offer_bytes(release, "d", None))
    assert rotated.offer_signer is not None
    assert json.loads(offer["envelope"])["key_id"] == rotated.offer_signer.key_id
    assert offer == json.loads(rotated.update_offer(release, "d", None).to_bytes())


@given(device_id=device_ids, nonce=request_ids, status=st.sampled_from(
    ["update-available", "up-to-date", "error"]
), manifest=st.none() | st.text(max_size=300), issued=st.integers(0, 2**40))
def test_sealed_envelope_is_the_models_canonical_bytes(
    device_id: str, nonce: str | None, status: str, manifest: str | None, issued: int
) -> None:
    envelope, signature = SIGNER.seal(
        device_id=device_id, nonce=nonce, status=status,  # type: ignore[arg-type]
        manifest=manifest, issued_at=issued, ttl_seconds=60,
    )
    model = OfferEnvelope.from_bytes(envelope.encode())
    assert model.to_bytes() == envelope.encode()
    assert (model.device_id, model.nonce, model.status, model.expires_at) == (
        device_id, nonce, status, issued + 60,
    )
    SIGNER.private_key.public_key().verify(bytes.fromhex(signature), envelope.encode())
