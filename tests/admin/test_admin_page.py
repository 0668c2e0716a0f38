"""The admin page and the seed's form endpoints, driven like a browser and like curl."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from tests.http_files.live_server import Running

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def browser_headers(server: Running) -> dict[str, str]:
    return {**BROWSER, "Origin": server.url, "Sec-Fetch-Site": "same-origin"}


def test_page_lists_releases(server: Running) -> None:
    content = b"page firmware" * 100
    server.publish(
        "build-1001", "1.1.0", content, hardware="board-a", channel="beta", notes="first"
    )
    page = server.admin_call("GET", "/admin/metadata")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    html = page.text
    for text in (
        "build-1001",
        "1.1.0",
        "ota-1.1.0.zip",
        "1.3 KiB",
        "board-a",
        "beta",
        "first",
        hashlib.sha256(content).hexdigest()[:12],
        "UTC",
        'name="viewport"',
    ):
        assert text in html, text
    # Forms: upload (multipart), add by name (the seed's fields), delete per release.
    assert 'enctype="multipart/form-data"' in html
    assert 'action="/admin/metadata/add"' in html
    assert 'action="/admin/metadata/delete"' in html
    assert "<script" not in html  # no JS at all
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_page_offers_unpublished_files_for_the_add_form(server: Running) -> None:
    server.put_file("ota-2.0.0.zip", b"staged")
    assert '<option value="ota-2.0.0.zip">' in server.admin_call("GET", "/admin/metadata").text


def test_seed_form_add_and_delete_with_curl_style_posts(server: Running) -> None:
    server.put_file("ota-1.2.0.zip", b"1.2.0 bytes")
    added = server.admin_call(
        "POST",
        "/admin/metadata/add",
        allow_redirects=False,
        data={"build_id": "build-1002", "version": "1.2.0", "filename": "ota-1.2.0.zip"},
    )
    assert added.status_code == 303
    assert added.headers["Location"] == "/admin/metadata"
    assert server.get("/metadata").json() == {
        "build-1002": {"version": "1.2.0", "filename": "ota-1.2.0.zip"}
    }
    deleted = server.admin_call(
        "POST", "/admin/metadata/delete", allow_redirects=False, data={"build_id": "build-1002"}
    )
    assert deleted.status_code == 303
    assert deleted.headers["Location"] == "/admin/metadata"
    assert server.get("/metadata").json() == {}
    assert (server.dirs.packages_dir / "ota-1.2.0.zip").exists()  # the file stays by default


def test_delete_form_can_remove_the_file_too(server: Running) -> None:
    server.publish("build-1", "1.0.0", b"abc", filename="gone.zip")
    response = server.admin_call(
        "POST",
        "/admin/metadata/delete",
        allow_redirects=False,
        data={"build_id": "build-1", "delete_file": "true"},
    )
    assert response.status_code == 303
    assert not (server.dirs.packages_dir / "gone.zip").exists()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_seeds_curl_command_works(server: Running) -> None:
    server.put_file("ota-1.2.0.zip", b"curl bytes")
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            f"admin:{server.password}",
            "-d",
            "build_id=build-1002",
            "-d",
            "version=1.2.0",
            "-d",
            "filename=ota-1.2.0.zip",
            f"{server.url}/admin/metadata/add",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == "303"
    assert "build-1002" in server.get("/metadata").json()


def test_failed_add_shows_a_readable_error_on_the_page(server: Running) -> None:
    server.publish("build-1001", "1.1.0", b"one", filename="one.zip")
    server.put_file("two.zip", b"two")
    response = server.admin_call(
        "POST",
        "/admin/metadata/add",
        headers=browser_headers(server),
        data={"build_id": "build-1001", "version": "1.2.0", "filename": "two.zip"},
    )
    assert response.status_code == 409
    assert "text/html" in response.headers["Content-Type"]
    assert 'role="alert"' in response.text
    assert "already exists" in response.text
    # What the operator typed is kept in the form.
    assert 'value="two.zip"' in response.text


def test_failed_add_for_scripts_is_the_json_error_body(server: Running) -> None:
    response = server.admin_call(
        "POST",
        "/admin/metadata/add",
        data={"build_id": "build-1", "version": "1.0.0", "filename": "absent.zip"},
    )
    assert response.status_code == 404
    assert response.json()["error"] == "package-not-found"


def test_missing_form_field_is_400(server: Running) -> None:
    response = server.admin_call("POST", "/admin/metadata/add", data={"build_id": "b"})
    assert response.status_code == 400
    assert response.json()["error"] == "bad-request"


def test_delete_of_unknown_build_on_the_page_is_404(server: Running) -> None:
    response = server.admin_call(
        "POST",
        "/admin/metadata/delete",
        headers=browser_headers(server),
        data={"build_id": "build-404"},
    )
    assert response.status_code == 404
    assert "build-404" in response.text


XSS = "<script>alert('x')</script>"


def test_script_in_notes_is_escaped(server: Running) -> None:
    server.publish("build-x", "1.0.0", b"x", notes=XSS)
    html = server.admin_call("GET", "/admin/metadata").text
    assert XSS not in html
    assert "&lt;script&gt;" in html


def test_script_in_a_version_is_refused_and_escaped_in_the_error(server: Running) -> None:
    server.put_file("x.zip", b"x")
    response = server.admin_call(
        "POST",
        "/admin/metadata/add",
        headers=browser_headers(server),
        data={"build_id": "build-x", "version": XSS, "filename": "x.zip", "notes": XSS},
    )
    assert response.status_code == 400
    assert XSS not in response.text
    assert "&lt;script&gt;" in response.text
    assert server.get("/metadata").json() == {}


def test_upload_form_publishes_and_redirects(server: Running) -> None:
    content = b"uploaded from the page" * 50
    response = server.admin_call(
        "POST",
        "/admin/metadata/upload",
        headers=browser_headers(server),
        allow_redirects=False,
        files={"file": ("C:\\Users\\op\\ota-3.0.0.zip", content)},
        data={
            "build_id": "build-3000",
            "version": "3.0.0",
            "hardware": "",
            "channel": "",
            "notes": "",
            "sha256": "",
            "filename": "",
        },
    )
    assert response.status_code == 303, response.text
    release = server.admin_call("GET", "/admin/api/releases").json()[0]
    assert release["filename"] == "ota-3.0.0.zip"  # the browser's path is stripped
    assert release["hardware"] is None and release["notes"] is None
    assert server.get("/packages/ota-3.0.0.zip").content == content


def test_upload_form_error_is_shown_on_the_page(server: Running) -> None:
    response = server.admin_call(
        "POST",
        "/admin/metadata/upload",
        headers=browser_headers(server),
        files={"file": ("p.zip", b"payload")},
        data={"build_id": "build-1", "version": "1.0.0", "sha256": "0" * 64},
    )
    assert response.status_code == 400
    assert "checksum-mismatch" in response.text
    assert 'value="build-1"' in response.text
    assert list(server.dirs.packages_dir.iterdir()) == []
