"""Every admin route needs HTTP Basic; browser writes from other sites are refused."""

from __future__ import annotations

import base64

import pytest
import requests

from tests.http_files.live_server import Running

ADMIN_ROUTES = [
    ("GET", "/admin/metadata"),
    ("POST", "/admin/metadata/add"),
    ("POST", "/admin/metadata/delete"),
    ("POST", "/admin/metadata/upload"),
    ("GET", "/admin/api/releases"),
    ("POST", "/admin/api/releases"),
    ("POST", "/admin/api/releases/from-file"),
    ("DELETE", "/admin/api/releases/build-1"),
    ("GET", "/admin/api/devices"),
    ("GET", "/admin/api/devices/dev-1"),
    ("GET", "/admin/api/metadata/export"),
    ("POST", "/admin/api/metadata/import"),
    ("GET", "/admin/api/devices/dev-1/explain"),
    ("GET", "/admin/api/rollouts"),
    ("POST", "/admin/api/rollouts"),
    ("GET", "/admin/api/rollouts/1"),
    ("POST", "/admin/api/rollouts/1/advance"),
    ("POST", "/admin/api/rollouts/1/pause"),
    ("POST", "/admin/api/rollouts/1/resume"),
    ("POST", "/admin/api/rollouts/1/abort"),
    ("GET", "/admin/"),
    ("GET", "/admin/devices"),
    ("GET", "/admin/devices/dev-1"),
    ("GET", "/admin/rollouts"),
    ("GET", "/admin/rollouts/1"),
    ("POST", "/admin/rollouts"),
    ("POST", "/admin/rollouts/1/abort"),
]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_without_credentials_are_401(server: Running, method: str, path: str) -> None:
    response = requests.request(method, server.url + path, timeout=30)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "authorization",
    [
        basic("admin", "wrong-password"),
        basic("root", "test-admin-pw-7f3c9a"),
        basic("admin", ""),
        "Basic not-base64!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer abc",
        "Basic",
    ],
)
@pytest.mark.parametrize(("method", "path"), [ADMIN_ROUTES[0], ADMIN_ROUTES[1], ADMIN_ROUTES[7]])
def test_wrong_or_malformed_credentials_are_401(
    server: Running, method: str, path: str, authorization: str
) -> None:
    response = requests.request(
        method, server.url + path, headers={"Authorization": authorization}, timeout=30
    )
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers


def test_right_credentials_are_accepted(server: Running) -> None:
    assert server.admin_call("GET", "/admin/metadata").status_code == 200
    assert server.admin_call("GET", "/admin/api/releases").json() == []


def test_password_is_not_in_any_response(server: Running) -> None:
    page = server.admin_call("GET", "/admin/metadata")
    assert server.password not in page.text
    denied = requests.get(server.url + "/admin/metadata", timeout=30)
    assert server.password not in denied.text


def test_unauthenticated_large_upload_is_refused_without_storing_anything(
    server: Running,
) -> None:
    response = requests.post(
        server.url + "/admin/api/releases",
        files={"file": ("big.zip", b"x" * (3 * 1024 * 1024))},
        data={"build_id": "b1", "version": "1.0.0"},
        timeout=60,
    )
    assert response.status_code == 401
    assert list(server.dirs.packages_dir.iterdir()) == []


# --- cross-site protection -------------------------------------------------------------


def add_form(n: int) -> dict[str, str]:
    return {"build_id": f"build-{n}", "version": f"1.0.{n}", "filename": f"f{n}.zip"}


@pytest.fixture
def staged(server: Running) -> Running:
    for n in range(10):
        server.put_file(f"f{n}.zip", f"package {n}".encode())
    return server


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},  # same host, other port: another origin
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
    ],
)
def test_cross_site_form_posts_are_403_and_change_nothing(
    staged: Running, headers: dict[str, str]
) -> None:
    response = staged.admin_call(
        "POST", "/admin/metadata/add", data=add_form(1), headers=headers, allow_redirects=False
    )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert staged.get("/metadata").json() == {}


def test_cross_site_api_delete_and_upload_are_403(staged: Running) -> None:
    staged.admin_call("POST", "/admin/metadata/add", data=add_form(1))
    evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert (
        staged.admin_call("DELETE", "/admin/api/releases/build-1", headers=evil).status_code == 403
    )
    upload = staged.admin_call(
        "POST",
        "/admin/api/releases",
        headers=evil,
        files={"file": ("x.zip", b"x")},
        data={"build_id": "b9", "version": "9.0.0"},
    )
    assert upload.status_code == 403
    assert set(staged.get("/metadata").json()) == {"build-1"}
    assert not (staged.dirs.packages_dir / "x.zip").exists()


def test_same_origin_browser_posts_pass(staged: Running) -> None:
    origin = staged.url  # what a browser sends for a form on this very page
    cases = [
        {"Origin": origin, "Sec-Fetch-Site": "same-origin"},
        {"Origin": origin},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar / bookmark
        {"Origin": origin.replace("127.0.0.1", "127.0.0.1")},
    ]
    for n, headers in enumerate(cases, start=1):
        response = staged.admin_call(
            "POST",
            "/admin/metadata/add",
            data=add_form(n),
            headers=headers,
            allow_redirects=False,
        )
        assert response.status_code == 303, (headers, response.text)
    assert len(staged.get("/metadata").json()) == len(cases)


def test_scripted_clients_without_browser_headers_pass(staged: Running) -> None:
    # curl -u admin:PW -d build_id=… -d version=… -d filename=… …/admin/metadata/add
    response = requests.post(
        staged.url + "/admin/metadata/add",
        data=add_form(3),
        auth=("admin", staged.password),
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/metadata"


def test_safe_methods_are_not_checked_for_origin(server: Running) -> None:
    response = server.admin_call(
        "GET", "/admin/api/releases", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert response.status_code == 200
