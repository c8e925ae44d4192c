"""Registry snapshots: signatures, membership keys, and what counts as data (pure checks)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.core.errors import AuthError
from connector.core.identity import KeyRing, public_jwk
from connector.registry.model import (
    MAX_ARRAY_ITEMS,
    MAX_CATALOG_BYTES,
    MAX_TTL_S,
    PublicationRefused,
    etag_of,
    index_catalog,
    newer,
    read_snapshot,
    sign_snapshot,
)

DID = "did:web:provider.example.org"
KID = DID + "#key-1"
NOW = 1_760_000_000
KEY = Ed25519PrivateKey.generate()
RING = KeyRing({KID: public_jwk(KEY)})


def catalog(**dataset: Any) -> dict[str, Any]:
    ds = {"@id": "weather", "@type": "Dataset", "title": "Weather observations",
          "description": "Hourly readings", "keyword": ["weather", "climate"],
          "theme": [{"@id": "http://publications.europa.eu/resource/authority/data-theme/ENVI"}],
          "distribution": [{"@type": "Distribution", "format": "HttpData-PULL",
                            "accessService": {"@id": DID + "#dsp", "@type": "DataService",
                                              "endpointURL": "https://p.example.org/dsp/2025-1"}}]}
    ds.update(dataset)
    return {"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], "@id": DID + "#c",
            "@type": "Catalog", "participantId": DID, "dataset": [ds],
            "service": [{"@id": DID + "#dsp", "@type": "DataService",
                         "endpointURL": "https://p.example.org/dsp/2025-1"}]}


def test_a_signed_catalogue_reads_back() -> None:
    doc = catalog()
    snap = read_snapshot(sign_snapshot(KEY, kid=KID, did=DID, catalog=doc, now=NOW),
                         keys=RING, now=NOW + 10, leeway_s=5)
    assert snap.publisher == DID and snap.etag == etag_of(doc)
    assert snap.endpoint == "https://p.example.org/dsp/2025-1"
    (meta,) = snap.datasets
    assert meta.keywords == ("weather", "climate") and meta.formats == ("HttpData-PULL",)
    assert meta.themes[0].endswith("/ENVI")


def test_etag_ignores_key_order_only() -> None:
    doc = catalog()
    assert etag_of(doc) == etag_of(dict(reversed(list(doc.items()))))
    assert etag_of(doc) != etag_of(catalog(title="Other"))


def test_a_forged_signature_is_refused() -> None:
    forged = sign_snapshot(Ed25519PrivateKey.generate(), kid=KID, did=DID, catalog=catalog(),
                           now=NOW)
    with pytest.raises(AuthError, match="signature invalid"):
        read_snapshot(forged, keys=RING, now=NOW, leeway_s=5)


def test_a_tampered_payload_is_refused() -> None:
    header, _, sig = sign_snapshot(KEY, kid=KID, did=DID, catalog=catalog(), now=NOW).split(".")
    other = sign_snapshot(KEY, kid=KID, did=DID, catalog=catalog(title="x"), now=NOW)
    with pytest.raises(AuthError):
        read_snapshot(f"{header}.{other.split('.')[1]}.{sig}", keys=RING, now=NOW, leeway_s=5)


def test_someone_elses_catalogue_is_refused() -> None:
    doc = catalog()
    doc["participantId"] = "did:web:other.example.org"
    with pytest.raises(PublicationRefused, match="participantId"):
        read_snapshot(sign_snapshot(KEY, kid=KID, did=DID, catalog=doc, now=NOW), keys=RING,
                      now=NOW, leeway_s=5)


def test_expired_and_overlong_snapshots_are_refused() -> None:
    token = sign_snapshot(KEY, kid=KID, did=DID, catalog=catalog(), now=NOW, ttl_s=60)
    with pytest.raises(AuthError, match="expired"):
        read_snapshot(token, keys=RING, now=NOW + 3600, leeway_s=5)
    token = sign_snapshot(KEY, kid=KID, did=DID, catalog=catalog(), now=NOW,
                          ttl_s=MAX_TTL_S + 1)
    with pytest.raises(PublicationRefused, match="lifetime"):
        read_snapshot(token, keys=RING, now=NOW, leeway_s=5)


@pytest.mark.parametrize("field", [
    {"dataAddress": {"endpoint": "https://p.example.org/data"}},
    {"distribution": [{"format": "x", "dspace:endpointProperties": [{"name": "a"}]}]},
    {"authorization": "abc"},
    {"access_token": "abc"},
    {"apiKey": "abc"},
    {"records": [{"t": 1}]},
    {"sample": {"t": 1}},
    {"description": "Bearer abcdef"},
    {"description": "eyJhbGciOiJFZERTQSJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl"},
    {"landingPage": "https://bucket.example.org/file.csv?X-Amz-Signature=abc&x=1"},
    {"related": {"@type": "DataAddress", "endpointURL": "https://x"}},
    {"keyword": [f"k{i}" for i in range(MAX_ARRAY_ITEMS + 1)]},
    {"description": "x" * 5000},
    {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}},
], ids=lambda f: next(iter(f)))
def test_data_bearing_entries_are_refused(field: dict[str, Any]) -> None:
    with pytest.raises(PublicationRefused):
        index_catalog(catalog(**field), DID)


def test_an_oversized_catalogue_is_refused() -> None:
    doc = catalog()
    doc["dataset"] = [dict(doc["dataset"][0], **{"@id": f"d{i}", "description": "y" * 4000})
                      for i in range(MAX_CATALOG_BYTES // 4000 + 1)]
    with pytest.raises(PublicationRefused, match="bytes"):
        index_catalog(doc, DID)


def test_duplicate_dataset_ids_and_missing_endpoint_are_refused() -> None:
    doc = catalog()
    doc["dataset"] = doc["dataset"] * 2
    with pytest.raises(PublicationRefused, match="unique"):
        index_catalog(doc, DID)
    doc = catalog()
    del doc["service"]
    with pytest.raises(PublicationRefused, match="DataService"):
        index_catalog(doc, DID)


def test_last_writer_wins_by_signed_time_then_etag() -> None:
    assert newer((2, "a"), None)
    assert newer((2, "a"), (1, "z"))
    assert not newer((1, "z"), (2, "a"))
    assert newer((2, "b"), (2, "a")) and not newer((2, "a"), (2, "a"))


def test_a_p256_participant_signs_a_snapshot_the_registry_verifies() -> None:
    # DCP participants and rotated keys may be P-256: publishing must not assume Ed25519.
    from cryptography.hazmat.primitives.asymmetric import ec

    from connector.core.identity import signing_public_jwk

    key = ec.generate_private_key(ec.SECP256R1())
    token = sign_snapshot(key, kid=KID, did=DID, catalog=catalog(), now=NOW)
    snap = read_snapshot(token, keys=KeyRing({KID: signing_public_jwk(key)}), now=NOW + 1,
                         leeway_s=5)
    assert snap.publisher == DID and snap.etag == etag_of(catalog())
