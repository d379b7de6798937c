"""Verified, resumable downloads against a misbehaving host on 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from advseg_cli.download import (DownloadFailedError, Expected, HostUnreachableError, download,
                                          part_path, with_mirror)
from tests.datasets.fixture_server import closed_port_url, serve


@pytest.fixture()
def hosted(tmp_path: Path) -> tuple[Path, bytes]:
    root = tmp_path / "host"
    root.mkdir()
    payload = bytes(range(256)) * 4096  # 1 MiB
    (root / "archive.bin").write_bytes(payload)
    return root, payload


def expected(payload: bytes) -> Expected:
    return Expected(size=len(payload), digest=hashlib.sha256(payload).hexdigest())


def test_a_truncated_transfer_resumes_with_a_range_request(hosted: tuple[Path, bytes], tmp_path: Path) -> None:
    root, payload = hosted
    with serve(root) as server:
        server.fail_next("archive.bin", "truncate")
        target = download(f"{server.url}/archive.bin", tmp_path / "out" / "archive.bin", expected(payload),
                          quiet=True)
        ranges = server.requests_of("archive.bin")
    assert target.read_bytes() == payload
    assert ranges[0] is None and ranges[1] == f"bytes={len(payload) // 2}-"  # continued, not restarted
    assert not part_path(target).exists()


def test_corrupt_bytes_are_detected_and_fetched_again(hosted: tuple[Path, bytes], tmp_path: Path) -> None:
    root, payload = hosted
    with serve(root) as server:
        server.fail_next("archive.bin", "corrupt")
        target = download(f"{server.url}/archive.bin", tmp_path / "archive.bin", expected(payload), quiet=True)
        assert len(server.requests_of("archive.bin")) == 2
    assert target.read_bytes() == payload


def test_a_file_that_stays_corrupt_is_given_up_and_leaves_nothing(hosted: tuple[Path, bytes], tmp_path: Path) -> None:
    root, payload = hosted
    target = tmp_path / "archive.bin"
    with serve(root) as server:
        server.fail_next("archive.bin", "corrupt", "corrupt", "corrupt")
        with pytest.raises(DownloadFailedError, match="still not intact after 3 tries"):
            download(f"{server.url}/archive.bin", target, expected(payload), quiet=True)
    assert not target.exists() and not part_path(target).exists()


def test_a_corrupt_copy_under_the_final_name_is_replaced(hosted: tuple[Path, bytes], tmp_path: Path) -> None:
    root, payload = hosted
    target = tmp_path / "archive.bin"
    target.write_bytes(payload[:1000])  # e.g. copied by hand, or damaged on disk
    with serve(root) as server:
        download(f"{server.url}/archive.bin", target, expected(payload), quiet=True)
        download(f"{server.url}/archive.bin", target, expected(payload), quiet=True)  # verified: no request
        assert len(server.requests_of("archive.bin")) == 1
    assert target.read_bytes() == payload


def test_an_unreachable_host_is_one_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "archive.bin"
    with pytest.raises(HostUnreachableError, match="cannot reach 127.0.0.1.*--mirror"):
        download(f"{closed_port_url()}/archive.bin", target, quiet=True)
    assert not target.exists() and not part_path(target).exists()


def test_missing_file_is_a_per_file_failure(hosted: tuple[Path, bytes], tmp_path: Path) -> None:
    root, _ = hosted
    with serve(root) as server, pytest.raises(DownloadFailedError, match="HTTP 404"):
        download(f"{server.url}/nothing.bin", tmp_path / "nothing.bin", quiet=True)


def test_mirror_replaces_scheme_and_host_only() -> None:
    assert with_mirror("http://images.cocodataset.org/train2017/1.jpg", "http://127.0.0.1:8000/") == \
        "http://127.0.0.1:8000/train2017/1.jpg"
    assert with_mirror("http://a.b/c", None) == "http://a.b/c"
