"""The management API (SPEC §5) and `imgproxy org`: the real app, real origins and servers on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pyvips
from aiohttp.test_utils import TestClient

from imgproxy.state import STATE
from tests.conftest import AppFactory, FakeOrigin, file_origin, make_image, poll
from tests.origins.test_ftp import PASSWORD, USER, run_server

Client = TestClient[Any, Any]

STATUSES = {"queued", "downloading", "processing", "tiling", "storing", "ready", "error"}
GENERATED_ID = re.compile(r"[A-Za-z0-9_-]{4,16}")
INVALID_KEY = {"error": "invalid api key"}
PATHS = ("/v2/images/add", "/v2/image/status", "/v2/folder/status", "/v2/folder/create")


@dataclass(frozen=True)
class Org:
    id: str
    key: str
    root: str

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"organisationId": self.id, "apiKey": self.key, **fields}


async def new_org(client: Client, name: str = "Acme") -> Org:
    made = await client.app[STATE].accounts.create_organisation(name)
    return Org(made.organisation.id, made.api_key, made.organisation.root_folder)


async def call(client: Client, path: str, body: Any) -> tuple[int, Any]:
    """POST a JSON body (or raw bytes as they are); every answer must be JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(
        path, data=io.BytesIO(data), headers={"Content-Type": "application/json"}
    )
    assert response.content_type == "application/json", (path, await response.text())
    return response.status, await response.json()


async def add(
    client: Client, org: Org, images: list[dict[str, Any]], folder: str | None = None
) -> list[dict[str, Any]]:
    status, body = await call(
        client, "/v2/images/add", org.body(folderId=folder or org.root, images=images)
    )
    assert status == 200, body
    result: list[dict[str, Any]] = body["result"]["images"]
    return result


async def statuses(client: Client, org: Org, ids: list[str]) -> list[dict[str, Any]]:
    status, body = await call(client, "/v2/image/status", org.body(imageIds=ids))
    assert status == 200, body
    result: list[dict[str, Any]] = body["result"]["images"]
    for item in result:
        assert item["status"] in STATUSES, item
    return result


async def until_done(
    client: Client, org: Org, ids: list[str], timeout: float = 30
) -> list[dict[str, Any]]:
    """Poll image/status until every image is ready or in error."""

    async def check() -> list[dict[str, Any]] | None:
        items = await statuses(client, org, ids)
        assert [item["id"] for item in items] == ids
        return items if all(i["status"] in ("ready", "error") for i in items) else None

    return await poll(check, timeout=timeout)


async def folder_status(client: Client, org: Org, folder: str) -> dict[str, Any]:
    status, body = await call(client, "/v2/folder/status", org.body(folderId=folder))
    assert status == 200, body
    result: dict[str, Any] = body["result"]
    return result


def image_rows(data_dir: Path) -> int:
    """Rows of the images table, read from the SQLite file itself."""
    with sqlite3.connect(f"file:{data_dir / 'imgproxy.sqlite3'}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    return count


async def run_cli(*args: str) -> tuple[int, str, str]:
    """`python -m imgproxy ARGS` without IMGPROXY_* variables from the outer environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imgproxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def cli_config(tmp_path: Path) -> Path:
    """A config whose data directory is the one settings_for gives the in-process app."""
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\ndir = "{tmp_path / "data"}"\n')
    return config


async def hook_create(client: Client, key: str, image_id: str) -> int:
    response = await client.get(f"/v1/eis/create/{image_id}", headers={"x-api-key": key})
    return response.status


# -- organisations and keys --------------------------------------------------------------------


async def test_org_create_prints_the_keys_and_works_at_once(
    tmp_path: Path, origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """`org create` prints exactly organisationId/apiKey/rootFolderId; a running server accepts the key."""
    client = await make_client([])
    code, out, err = await run_cli("org", "create", "Acme Corp", "-c", str(cli_config(tmp_path)))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    made = json.loads(lines[0])
    assert set(made) == {"organisationId", "apiKey", "rootFolderId"}
    org = Org(made["organisationId"], made["apiKey"], made["rootFolderId"])
    assert await folder_status(client, org, org.root) == {
        "numTotal": 0,
        "numComplete": 0,
        "processingIds": [],
        "erroredIds": [],
    }
    assert await hook_create(client, org.key, "by-cli") == 200
    origin_server.files["cli.jpg"] = make_image(300, 200)
    [item] = await add(client, org, [{"sourceUrl": origin_server.url + "cli.jpg"}])
    assert (await until_done(client, org, [item["id"]]))[0]["status"] == "ready"

    secret = org.key.partition(".")[2]
    assert len(secret) >= 16
    data_files = [p for p in (tmp_path / "data").iterdir() if p.is_file()]
    assert any(p.name == "imgproxy.sqlite3" for p in data_files)
    for path in data_files:  # the database, its WAL and shared memory
        content = path.read_bytes()
        assert secret.encode() not in content, path
        assert org.key.encode() not in content, path


async def test_rotate_key_replaces_the_key_at_once(tmp_path: Path, make_client: AppFactory) -> None:
    """`org rotate-key` makes the old key fail (401) and the new one work, in both APIs, at once."""
    client = await make_client([])
    config = str(cli_config(tmp_path))
    code, out, err = await run_cli("org", "create", "Rotating", "-c", config)
    assert code == 0, err
    made = json.loads(out)
    old = Org(made["organisationId"], made["apiKey"], made["rootFolderId"])
    assert await hook_create(client, old.key, "before") == 200
    code, out, err = await run_cli("org", "rotate-key", old.id, "-c", config)
    assert code == 0, err
    rotated = json.loads(out)
    assert rotated["organisationId"] == old.id
    new = Org(old.id, rotated["apiKey"], old.root)
    assert new.key != old.key

    assert await hook_create(client, old.key, "after-old") == 401
    assert await call(client, "/v2/folder/status", old.body(folderId=old.root)) == (
        401,
        INVALID_KEY,
    )
    assert await hook_create(client, new.key, "after-new") == 200
    assert (await folder_status(client, new, new.root))["numTotal"] == 0
    code, _out, err = await run_cli("org", "rotate-key", "no-such-org", "-c", config)
    assert code != 0 and "no-such-org" in err


async def test_one_key_for_hooks_and_management_and_only_its_own_org(
    make_client: AppFactory, originals: Path
) -> None:
    """The key works as x-api-key and as apiKey; with another organisation's id it is a 401 everywhere."""
    (originals / "shared").write_bytes(make_image(400, 300))
    client = await make_client([file_origin(originals)])
    acme, other = await new_org(client, "Acme"), await new_org(client, "Other")
    assert await hook_create(client, acme.key, "shared") == 200
    [item] = await until_done(client, acme, ["shared"])
    assert item["status"] == "ready"
    assert await statuses(client, other, ["shared"]) == []  # another organisation's image
    body = {
        "organisationId": acme.id,
        "apiKey": other.key,  # a valid key, of another organisation
        "folderId": acme.root,
        "parentId": acme.root,
        "imageIds": ["shared"],
        "images": [{"sourceUrl": "http://example.com/a.jpg"}],
    }
    for path in PATHS:
        assert await call(client, path, body) == (401, INVALID_KEY), path
    # (fewer than 20 failures in all: repeated failures are rate-limited with 429)
    for key in (None, "", 42, f"{acme.id}.wrong", other.key.partition(".")[2]):
        assert await call(client, PATHS[1], {**body, "apiKey": key}) == (401, INVALID_KEY), key
    assert image_rows(client.app[STATE].settings.data_dir) == 1


# -- images/add and image/status ---------------------------------------------------------------


async def test_add_answers_generated_ids_and_names_in_input_order(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """images/add answers one {id, name, status} per image in order: short unique IDs, default names."""
    # Every source is on loopback (a closed port where nothing is served): no fetch leaves the host.
    closed = "127.0.0.1:9"
    bucket = {
        "name": "bucket",
        "type": "s3",
        "bucket": "bucket",
        "region": "us-east-1",
        "endpoint_url": f"http://{closed}",
        "access_key_id": "AKIDNOWHERE",
        "secret_access_key": "nowhere",
    }
    client = await make_client([bucket])
    org = await new_org(client)
    base = origin_server.url
    images = [
        {"sourceUrl": base + "first.jpg"},
        {"sourceUrl": base + "second.png?size=big", "name": ""},
        {"sourceUrl": base + "third.jpeg", "name": "My Third"},
        {"sourceUrl": base + "first.jpg"},
        {"sourceUrl": f"https://{closed}/a/b/c/deep.tiff"},
        {"sourceUrl": "s3://bucket/some/key.jpg"},
        {"sourceUrl": f"ftp://user:pw@{closed}/pics/scan.gif"},
    ]
    origin_server.delay = 5.0  # nothing needs to finish here
    result = await add(client, org, images, folder=org.root)
    assert [item["name"] for item in result] == [
        "first.jpg",
        "second.png",
        "My Third",
        "first.jpg",
        "deep.tiff",
        "key.jpg",
        "scan.gif",
    ]
    assert all(set(item) == {"id", "name", "status"} for item in result)
    assert all(item["status"] == "queued" for item in result)
    ids = [item["id"] for item in result]
    assert len(set(ids)) == len(ids)
    assert all(GENERATED_ID.fullmatch(i) for i in ids), ids
    # the IDs are image IDs of the viewer API too
    response = await client.get(f"/images/{ids[0]}/info.json")
    assert response.status == 200
    assert (await response.json())["id"] == ids[0]


async def test_added_images_reach_ready_with_size_and_thumbnail(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """image/status reports width/height and, once ready, an absolute thumbnail that is an image."""
    origin_server.files["wide.jpg"] = make_image(1000, 500)
    origin_server.files["alpha.png"] = make_image(500, 400, fmt="png", alpha=True)
    origin_server.files["broken.jpg"] = b"not an image at all"
    client = await make_client([])
    org = await new_org(client)
    names = ["wide.jpg", "alpha.png", "missing.jpg", "broken.jpg"]
    result = await add(client, org, [{"sourceUrl": origin_server.url + n} for n in names])
    ids = [item["id"] for item in result]
    seen: set[str] = set()

    async def check() -> list[dict[str, Any]] | None:
        items = await statuses(client, org, ids)
        seen.update(item["status"] for item in items)
        return items if all(i["status"] in ("ready", "error") for i in items) else None

    wide, alpha, missing, broken = await poll(check, timeout=30)
    assert seen <= STATUSES
    for item, name in zip((wide, alpha, missing, broken), names, strict=True):
        assert item["name"] == name
    assert (wide["status"], wide["width"], wide["height"]) == ("ready", 1000, 500)
    assert (alpha["status"], alpha["width"], alpha["height"]) == ("ready", 500, 400)
    assert "error" not in wide and "error" not in alpha
    assert (missing["status"], missing["error"]) == ("error", "originalNotFound")
    assert (broken["status"], broken["error"]) == ("error", "invalidImage")
    for item in (missing, broken):
        assert "thumbnail" not in item
    for item in (wide, alpha):
        thumbnail = item["thumbnail"]
        prefix = f"http://proxy.test/images/{item['id']}/"
        assert thumbnail.startswith(prefix), thumbnail
        response = await client.get(thumbnail.removeprefix("http://proxy.test"))
        assert response.status == 200
        assert response.content_type.startswith("image/")
        image = pyvips.Image.new_from_buffer(await response.read(), "")
        assert image.width == 320
    stats = await folder_status(client, org, org.root)
    assert (stats["numTotal"], stats["numComplete"], stats["processingIds"]) == (4, 2, [])
    assert sorted(stats["erroredIds"]) == sorted([missing["id"], broken["id"]])


async def test_a_batch_larger_than_the_worker_pool_all_reaches_ready(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """More images than workers (2): every one of them still reaches ready with every stage."""
    names = [f"many-{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        origin_server.files[name] = make_image(400 + 20 * i, 300, seed=i)
    client = await make_client([])
    org = await new_org(client)
    ids = [
        i["id"]
        for i in await add(client, org, [{"sourceUrl": origin_server.url + n} for n in names])
    ]
    items = await until_done(client, org, ids, timeout=20)
    assert [item["status"] for item in items] == ["ready"] * len(ids), items
    for image_id in ids:
        info = await (await client.get(f"/images/{image_id}/info.json")).json()
        assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}


async def test_status_keeps_the_order_asked_and_leaves_out_others(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """image/status answers in the order asked, leaving out unknown IDs and other organisations' ones."""
    origin_server.delay = 5.0
    client = await make_client([])
    acme, other = await new_org(client, "Acme"), await new_org(client, "Other")
    mine = [
        i["id"] for i in await add(client, acme, [{"sourceUrl": origin_server.url + "a.jpg"}] * 3)
    ]
    [theirs] = [
        i["id"] for i in await add(client, other, [{"sourceUrl": origin_server.url + "b.jpg"}])
    ]
    asked = [mine[2], "unknown-id", theirs, mine[0], mine[1], mine[0]]
    assert [item["id"] for item in await statuses(client, acme, asked)][:3] == [
        mine[2],
        mine[0],
        mine[1],
    ]
    assert [item["id"] for item in await statuses(client, other, asked)] == [theirs]
    for item in await statuses(client, acme, mine):
        assert item["name"] == "a.jpg"
        assert "thumbnail" not in item


async def test_folder_status_counts_processing_complete_and_errored(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """folder/status counts the folder's images, listing the ones still processing and in error."""
    origin_server.files["ok.jpg"] = make_image(400, 300)
    client = await make_client([])
    org = await new_org(client)
    status, body = await call(client, "/v2/folder/create", org.body(parentId=org.root, name="F"))
    assert status == 200, body
    folder = body["result"]["id"]
    urls = [origin_server.url + n for n in ("ok.jpg", "gone.jpg", "ok.jpg")]
    ids = [i["id"] for i in await add(client, org, [{"sourceUrl": u} for u in urls], folder)]
    first = await folder_status(client, org, folder)
    assert first["numTotal"] == 3
    assert set(first["processingIds"]) | set(first["erroredIds"]) <= set(ids)
    assert first["numComplete"] + len(first["processingIds"]) + len(first["erroredIds"]) == 3
    await until_done(client, org, ids)
    assert await folder_status(client, org, folder) == {
        "numTotal": 3,
        "numComplete": 2,
        "processingIds": [],
        "erroredIds": [ids[1]],
    }
    # the root folder is another folder: its counts do not include these
    assert (await folder_status(client, org, org.root))["numTotal"] == 0


# -- folder/create -----------------------------------------------------------------------------


async def test_folder_create_types_parents_and_ids(make_client: AppFactory) -> None:
    """folder/create answers a 6-character id for folder|album|space; another type 400, unknown parent 404."""
    client = await make_client([])
    org, other = await new_org(client, "Acme"), await new_org(client, "Other")
    made = []
    for extra in ({}, {"type": "folder"}, {"type": "album", "name": "Album"}, {"type": "space"}):
        status, body = await call(client, "/v2/folder/create", org.body(parentId=org.root, **extra))
        assert status == 200, body
        assert set(body) == {"result"} and set(body["result"]) == {"id"}
        made.append(body["result"]["id"])
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{6}", f) for f in made), made
    assert len(set(made) | {org.root}) == len(made) + 1
    status, body = await call(client, "/v2/folder/create", org.body(parentId=made[2]))
    assert status == 200, body  # nested under an album
    assert (await folder_status(client, org, body["result"]["id"]))["numTotal"] == 0
    for bad in ("gallery", "Folder", "albums"):
        status, body = await call(
            client, "/v2/folder/create", org.body(parentId=org.root, type=bad)
        )
        assert status == 400 and "type" in body["error"], (bad, body)
    for parent in ("nope00", other.root):
        assert (await call(client, "/v2/folder/create", org.body(parentId=parent)))[0] == 404
    assert (await call(client, "/v2/folder/status", org.body(folderId=other.root)))[0] == 404


# -- sourceUrl schemes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


async def test_s3_source_url_uses_the_configured_bucket_origin(
    moto_endpoint: str, make_client: AppFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """s3://bucket/key is fetched with the endpoint and credentials of the s3 origin of that bucket."""
    import botocore.session  # type: ignore[import-untyped]

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    credentials = {"aws_access_key_id": "AKIDMGMTTEST", "aws_secret_access_key": "mgmt-secret"}
    s3 = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=moto_endpoint, **credentials
    )
    try:
        s3.create_bucket(Bucket="mgmt-bucket")
        s3.put_object(Bucket="mgmt-bucket", Key="some/key.jpg", Body=make_image(700, 400))
    finally:
        s3.close()
    origin = {
        "name": "bucket",
        "type": "s3",
        "bucket": "mgmt-bucket",
        "region": "us-east-1",
        "endpoint_url": moto_endpoint,
        "access_key_id": credentials["aws_access_key_id"],
        "secret_access_key": credentials["aws_secret_access_key"],
    }
    client = await make_client([origin])
    org = await new_org(client)
    [item] = await add(client, org, [{"sourceUrl": "s3://mgmt-bucket/some/key.jpg"}])
    assert item["name"] == "key.jpg"
    [done] = await until_done(client, org, [item["id"]])
    assert (done["status"], done["width"], done["height"]) == ("ready", 700, 400), done
    assert "mgmt-secret" not in json.dumps(done)


async def test_ftp_source_url_reaches_ready(tmp_path: Path, make_client: AppFactory) -> None:
    """ftp://user:pass@host:port/path is fetched (through the address policy) and the password never shown."""
    root = tmp_path / "ftp-home"
    (root / "pics").mkdir(parents=True)
    (root / "pics" / "a.jpg").write_bytes(make_image(600, 450))
    with run_server(root) as ftp:
        client = await make_client([])
        org = await new_org(client)
        url = f"ftp://{USER}:{PASSWORD}@127.0.0.1:{ftp.port}/pics/a.jpg"
        [item] = await add(client, org, [{"sourceUrl": url}])
        assert item["name"] == "a.jpg"
        [done] = await until_done(client, org, [item["id"]])
        assert (done["status"], done["width"], done["height"]) == ("ready", 600, 450), done
        assert PASSWORD not in json.dumps(done)
        assert ftp.logins == [USER]
        await client.close()  # closes the FTP pool before the server stops


async def test_other_schemes_are_a_400_naming_the_index(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """A sourceUrl of another scheme is a 400 naming images[i].sourceUrl, and nothing is created."""
    client = await make_client([])
    org = await new_org(client)
    good = {"sourceUrl": origin_server.url + "fine.jpg"}
    for bad_url, images, index in (
        ("file:///etc/passwd", [good, {"sourceUrl": "file:///etc/passwd"}], 1),
        ("gopher://x", [{"sourceUrl": "gopher://x"}], 0),
        ("data:", [good, good, {"sourceUrl": "data:image/png;base64,AAAA"}], 2),
        ("javascript:", [good, {"sourceUrl": "javascript:alert(1)"}], 1),
        ("no scheme", [{"sourceUrl": "/etc/passwd"}], 0),
        ("no host", [good, {"sourceUrl": "http:///x.jpg"}], 1),
        ("upload:", [good, {"sourceUrl": "upload:stored-by-the-store-api"}], 1),
    ):
        status, body = await call(
            client, "/v2/images/add", org.body(folderId=org.root, images=images)
        )
        assert status == 400, (bad_url, body)
        assert f"images[{index}].sourceUrl" in body["error"], (bad_url, body)
    assert image_rows(client.app[STATE].settings.data_dir) == 0
    assert origin_server.total_hits() == 0


async def test_private_addresses_refused_when_not_allowed(
    tmp_path: Path, origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """With allow_private_networks = false, http and ftp sourceUrls on loopback end as uploadError."""
    origin_server.files["inside.jpg"] = make_image(300, 200)
    root = tmp_path / "ftp-home"
    root.mkdir()
    (root / "inside.jpg").write_bytes(make_image(300, 200))
    with run_server(root) as ftp:
        client = await make_client([], limits={"allow_private_networks": False})
        org = await new_org(client)
        urls = [
            origin_server.url + "inside.jpg",
            f"ftp://{USER}:{PASSWORD}@127.0.0.1:{ftp.port}/inside.jpg",
            f"ftp://{USER}:{PASSWORD}@localhost:{ftp.port}/inside.jpg",
        ]
        ids = [i["id"] for i in await add(client, org, [{"sourceUrl": u} for u in urls])]
        for item in await until_done(client, org, ids):
            assert (item["status"], item["error"]) == ("error", "uploadError"), item
        assert origin_server.total_hits() == 0
        assert ftp.logins == []
        await client.close()


# -- batches -----------------------------------------------------------------------------------


async def test_a_batch_of_1000_is_accepted_and_1001_refused(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """One add call takes 1,000 images (all IDs, in order); 1,001 is a 400 and creates nothing."""
    origin_server.delay = 5.0  # the workers wait on the origin; nothing needs to finish
    client = await make_client([])
    org = await new_org(client)
    data_dir = client.app[STATE].settings.data_dir
    too_many = [{"sourceUrl": f"{origin_server.url}over-{i}.jpg"} for i in range(1001)]
    status, body = await call(
        client, "/v2/images/add", org.body(folderId=org.root, images=too_many)
    )
    assert status == 400 and "images" in body["error"], body
    assert image_rows(data_dir) == 0

    batch = [{"sourceUrl": f"{origin_server.url}batch-{i}.jpg"} for i in range(1000)]
    started = time.monotonic()
    result = await add(client, org, batch)
    elapsed = time.monotonic() - started
    assert len(result) == 1000
    assert [item["name"] for item in result] == [f"batch-{i}.jpg" for i in range(1000)]
    ids = [item["id"] for item in result]
    assert len(set(ids)) == 1000
    assert all(GENERATED_ID.fullmatch(i) for i in ids)
    assert elapsed < 10, elapsed
    assert image_rows(data_dir) == 1000
    assert (await folder_status(client, org, org.root))["numTotal"] == 1000
    sample = await statuses(client, org, ids[::10])
    assert [item["id"] for item in sample] == ids[::10]


async def test_a_batch_of_1000_long_urls_is_accepted(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """1,000 images with long (presigned-style, 1,500-character) URLs fit in one add call."""
    origin_server.delay = 5.0
    client = await make_client([])
    org = await new_org(client)
    query = "X-Amz-Signature=" + "a" * 1400
    batch = [{"sourceUrl": f"{origin_server.url}long-{i}.jpg?{query}"} for i in range(1000)]
    assert all(len(item["sourceUrl"]) <= 2048 for item in batch)
    status, body = await call(client, "/v2/images/add", org.body(folderId=org.root, images=batch))
    assert status == 200, (status, body)
    assert len(body["result"]["images"]) == 1000


async def test_cold_view_during_a_migration_gets_its_placeholder_promptly(
    origin_server: FakeOrigin, make_client: AppFactory, originals: Path
) -> None:
    """While every regular worker is busy with a slow bulk batch, a cold view is answered within first_view_wait."""
    wait = 5.0
    origin_server.delay = 3.0  # every bulk download takes 3 s
    (originals / "cold-one").write_bytes(make_image(1200, 800))
    client = await make_client(
        [file_origin(originals)], viewer={"first_view_wait": wait}, limits={"read_timeout": 10.0}
    )
    state = client.app[STATE]
    org = await new_org(client)
    for i in range(20):
        origin_server.files[f"bulk-{i}.jpg"] = make_image(300, 200, seed=i)
    ids = [
        item["id"]
        for item in await add(
            client, org, [{"sourceUrl": f"{origin_server.url}bulk-{i}.jpg"} for i in range(20)]
        )
    ]

    async def workers_busy() -> bool:
        return state.workers.busy >= state.settings.processing.workers

    await poll(workers_busy, timeout=10)
    started = time.monotonic()
    response = await client.get("/images/cold-one?w=300")
    elapsed = time.monotonic() - started
    assert response.status == 200, await response.text()
    assert response.headers["X-Image-Stage"] in ("placeholder", "display")
    assert elapsed < wait, elapsed
    stats = await folder_status(client, org, org.root)
    assert stats["numTotal"] == 20 and stats["numComplete"] < 20
    assert set(stats["processingIds"]) <= set(ids) and stats["processingIds"]


# -- bad input ---------------------------------------------------------------------------------


async def test_malformed_bodies_are_400_naming_the_field(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """Malformed JSON, a non-object body and missing or mistyped fields are JSON 400s naming the field."""
    client = await make_client([])
    org = await new_org(client)
    url = origin_server.url + "x.jpg"
    ok_images = [{"sourceUrl": url}]
    raw_cases: list[tuple[bytes, str]] = [
        (b"", ""),
        (b"{not json", "JSON"),
        (b'{"organisationId": ', "JSON"),
        (b"[1, 2]", "object"),
        (b'"a string"', "object"),
        (b"42", "object"),
        (b"null", "object"),
    ]
    for path in PATHS:
        for raw, fragment in raw_cases:
            status, body = await call(client, path, raw)
            assert status == 400, (path, raw, body)
            assert set(body) == {"error"} and fragment in body["error"], (path, raw, body)

    add_cases: list[tuple[dict[str, Any], str]] = [
        ({"images": ok_images}, "folderId"),
        ({"folderId": 5, "images": ok_images}, "folderId"),
        ({"folderId": "", "images": ok_images}, "folderId"),
        ({"folderId": org.root}, "images"),
        ({"folderId": org.root, "images": "x"}, "images"),
        ({"folderId": org.root, "images": {"sourceUrl": url}}, "images"),
        ({"folderId": org.root, "images": []}, "images"),
        ({"folderId": org.root, "images": ["x"]}, "images[0]"),
        ({"folderId": org.root, "images": [{}]}, "images[0].sourceUrl"),
        ({"folderId": org.root, "images": [{"url": url}]}, "images[0].sourceUrl"),
        ({"folderId": org.root, "images": [{"sourceUrl": 7}]}, "images[0].sourceUrl"),
        ({"folderId": org.root, "images": [{"sourceUrl": ""}]}, "images[0].sourceUrl"),
        (
            {"folderId": org.root, "images": [*ok_images, {"sourceUrl": None}]},
            "images[1].sourceUrl",
        ),
        ({"folderId": org.root, "images": [{"sourceUrl": url, "name": 3}]}, "images[0].name"),
        ({"folderId": org.root, "images": ok_images, "userEmail": 1}, "userEmail"),
    ]
    status_cases: list[tuple[dict[str, Any], str]] = [
        ({}, "imageIds"),
        ({"imageIds": "abc"}, "imageIds"),
        ({"imageIds": []}, "imageIds"),
        ({"imageIds": [1]}, "imageIds[0]"),
        ({"imageIds": ["a", None]}, "imageIds[1]"),
        ({"imageIds": [f"id{i}" for i in range(101)]}, "imageIds"),
    ]
    folder_cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v2/folder/status", {}, "folderId"),
        ("/v2/folder/status", {"folderId": ["x"]}, "folderId"),
        ("/v2/folder/create", {}, "parentId"),
        ("/v2/folder/create", {"parentId": 1}, "parentId"),
        ("/v2/folder/create", {"parentId": org.root, "type": 2}, "type"),
        ("/v2/folder/create", {"parentId": org.root, "name": 2}, "name"),
    ]
    cases = [
        *(("/v2/images/add", fields, name) for fields, name in add_cases),
        *(("/v2/image/status", fields, name) for fields, name in status_cases),
        *folder_cases,
    ]
    for path, fields, name in cases:
        status, body = await call(client, path, org.body(**fields))
        assert status == 400, (path, fields, body)
        assert set(body) == {"error"} and name in body["error"], (path, fields, body)
    for path in PATHS:
        status, body = await call(client, path, {"apiKey": org.key, "folderId": org.root})
        assert status == 400 and "organisationId" in body["error"], (path, body)
        status, body = await call(client, path, {**org.body(), "organisationId": 12})
        assert status == 400 and "organisationId" in body["error"], (path, body)
    assert (await statuses(client, org, [f"id{i}" for i in range(100)])) == []
    assert image_rows(client.app[STATE].settings.data_dir) == 0
    assert origin_server.total_hits() == 0


async def test_rejected_calls_create_nothing(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """Unknown folder 404, bad key 401, a bad item 400: each a JSON error, and no image half-created."""
    origin_server.files["kept.jpg"] = make_image(300, 200)
    client = await make_client([])
    org, other = await new_org(client, "Acme"), await new_org(client, "Other")
    data_dir = client.app[STATE].settings.data_dir
    [kept] = await add(client, org, [{"sourceUrl": origin_server.url + "kept.jpg"}])
    await until_done(client, org, [kept["id"]])
    good = [{"sourceUrl": f"{origin_server.url}new-{i}.jpg"} for i in range(5)]
    rejected: list[tuple[dict[str, Any], int]] = [
        (org.body(folderId="nope00", images=good), 404),
        (org.body(folderId=other.root, images=good), 404),  # another organisation's folder
        ({**org.body(folderId=org.root, images=good), "apiKey": "x"}, 401),
        ({**org.body(folderId=org.root, images=good), "apiKey": other.key}, 401),
        (org.body(folderId=org.root, images=[*good, {"sourceUrl": "file:///etc/passwd"}]), 400),
        (org.body(folderId=org.root, images=[*good, {"name": "no url"}]), 400),
        (org.body(folderId=org.root, images=[*good, {"sourceUrl": "x", "name": 1}]), 400),
        (org.body(folderId=org.root, images=good * 201), 400),
    ]
    for body, expected in rejected:
        status, answer = await call(client, "/v2/images/add", body)
        assert status == expected, (body.get("folderId"), answer)
        assert set(answer) == {"error"} and isinstance(answer["error"], str)
        assert image_rows(data_dir) == 1
    assert await call(client, "/v2/folder/status", org.body(folderId="nope00")) == (
        404,
        {"error": "folder nope00 not found"},
    )
    stats = await folder_status(client, org, org.root)
    assert (stats["numTotal"], stats["numComplete"]) == (1, 1)
    assert origin_server.hits.keys() == {"kept.jpg"}


async def test_a_new_key_works_while_another_read_is_in_flight(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An organisation made while another read is running authenticates at once (no stale snapshot)."""
    client = await make_client([])
    state = client.app[STATE]
    await new_org(client, "First")
    await new_org(client, "Second")
    entered, gate = threading.Event(), threading.Event()

    def hold(_row: object) -> int:
        """Runs inside the other read, on its first row (its snapshot taken): wait for the gate."""
        if not entered.is_set():
            entered.set()
            gate.wait(10)
        return 1

    await state.store.reader.create_function("hold", 1, hold)
    other_read = asyncio.create_task(state.store.fetchall("SELECT hold(id), id FROM orgs"))
    try:
        await poll(lambda: asyncio.sleep(0, result=entered.is_set()))
        late = await new_org(client, "Late")  # committed after the other read's snapshot
        authenticate = state.accounts.authenticate
        asked = asyncio.Event()

        async def spy(*args: Any, **kwargs: Any) -> str | None:
            asked.set()  # the read is queued at once: nothing awaits before it
            return await authenticate(*args, **kwargs)

        monkeypatch.setattr(state.accounts, "authenticate", spy)
        answer = asyncio.create_task(
            call(client, "/v2/folder/status", late.body(folderId=late.root))
        )
        await asyncio.wait_for(asked.wait(), 10)
    finally:
        gate.set()
    await other_read
    assert (await answer)[0] == 200, await answer
