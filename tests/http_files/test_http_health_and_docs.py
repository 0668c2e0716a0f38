"""/healthz reflects the database; /docs and the OpenAPI description are served."""

from __future__ import annotations

from sqlalchemy import text

from tests.http_files.live_server import Running


def test_healthz_ok(server: Running) -> None:
    response = server.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["releases"] == 0


def test_healthz_is_503_when_the_database_fails(server: Running) -> None:
    # A real failure, not a mock: the table every catalog read needs is gone.
    with server.services.database.engine.begin() as conn:
        conn.execute(text("DROP TABLE catalog_state"))
    response = server.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error"
    assert response.json()["error"] == "unavailable"
    assert response.headers["Retry-After"]


def test_docs_and_openapi(server: Running) -> None:
    docs = server.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["Content-Type"]
    spec = server.get("/openapi.json").json()
    for path in (
        "/check-update",
        "/packages/{filename}",
        "/checksum/{filename}",
        "/metadata",
        "/update",
        "/healthz",
        "/admin/metadata",
        "/admin/metadata/add",
        "/admin/metadata/delete",
        "/admin/api/releases",
    ):
        assert path in spec["paths"], path
    update = spec["paths"]["/update"]["get"]
    assert "build_id" in update["description"]
    assert "checksum" in update["description"]
    upload = spec["paths"]["/admin/api/releases"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
