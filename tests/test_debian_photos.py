"""The Debian photo set's readers (``tests/debian_photos.py``) on small archives built here, and its errors.

The real package is read by the slow Google int8 test (every photo's SHA-256 checked there); these cover the
formats' mechanics — an ``ar`` archive around ``data.tar.xz``, a Qt resource bundle with raw and zlib
entries — and what a wrong file does.
"""

from __future__ import annotations

import io
import lzma
import struct
import tarfile
import zlib

import pytest

import debian_photos


def make_rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A format-2 bundle with one directory ``:/d`` holding ``files`` (name → (bytes, zlib-compress)), laid
    out as Qt's rcc writes it: 22-byte tree entries, names as length + hash + UTF-16BE, data as size + bytes."""
    names, data, name_at, data_at = b"", b"", {}, {}
    for name in ["d", *files]:
        name_at[name] = len(names)
        encoded = name.encode("utf-16-be")
        names += struct.pack(">HI", len(name), 0) + encoded
    for name, (blob, packed) in files.items():
        data_at[name] = len(data)
        payload = struct.pack(">I", len(blob)) + zlib.compress(blob) if packed else blob
        data += struct.pack(">I", len(payload)) + payload
    entries = [struct.pack(">IHII", 0, 2, 1, 1) + bytes(8),  # root: one child (entry 1)
               struct.pack(">IHII", name_at["d"], 2, len(files), 2) + bytes(8)]  # fmt: skip
    for name, (_, packed) in files.items():
        entries.append(struct.pack(">IHHHI", name_at[name], 1 if packed else 0, 0, 0, data_at[name]) + bytes(8))
    tree = b"".join(entries)
    header = 20
    return (
        b"qres"
        + struct.pack(">IIII", 2, header, header + len(tree), header + len(tree) + len(data))
        + tree
        + data
        + names
    )


def make_deb(members: dict[str, bytes]) -> bytes:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    out = b"!<arch>\n"
    for name, blob in (("debian-binary", b"2.0\n"), ("data.tar.xz", lzma.compress(tar_bytes.getvalue()))):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode() + blob + b"\n" * (len(blob) % 2)
    return out


def test_rcc_reader_returns_raw_and_zlib_entries_by_path():
    files = {"a.webp": (b"RIFF raw bytes", False), "b.webp": (b"zlib-packed " * 50, True)}
    assert debian_photos.rcc_files(make_rcc(files)) == {
        ":/d/a.webp": files["a.webp"][0],
        ":/d/b.webp": files["b.webp"][0],
    }


def test_rcc_reader_rejects_other_files():
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        debian_photos.rcc_files(b"PK\x03\x04 a zip file")


def test_deb_members_reads_named_files_from_data_tar(tmp_path):
    deb = tmp_path / "x.deb"
    deb.write_bytes(make_deb({"./usr/share/a.rcc": b"one", "./usr/share/b.rcc": b"two!"}))
    assert debian_photos.deb_members(deb, {"./usr/share/b.rcc"}) == {"./usr/share/b.rcc": b"two!"}
    with pytest.raises(ValueError, match=r"x\.deb: missing \['./usr/share/c.rcc'\]"):
        debian_photos.deb_members(deb, {"./usr/share/c.rcc"})


def test_deb_members_names_a_file_that_is_not_a_package(tmp_path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"<html>proxy error</html>")
    with pytest.raises(ValueError, match=r"bad\.deb: not a Debian package"):
        debian_photos.deb_members(bad, {"x"})


def test_a_cached_package_with_the_wrong_hash_is_refused_not_used(tmp_path):
    (tmp_path / debian_photos.DEB).write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="SHA-256 differs"):
        debian_photos.fetch_deb(tmp_path)
    assert (tmp_path / debian_photos.DEB).read_bytes() == b"truncated"  # left for the user to inspect


def test_without_apt_the_error_says_where_the_photos_come_from(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get on it
    with pytest.raises(RuntimeError, match="apt-get not found"):
        debian_photos.fetch_deb(tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # no partial download left behind


def test_manifest_lists_219_distinct_photos():
    rows = debian_photos.manifest()
    assert len(rows) == 219
    assert len({sha for _, _, sha in rows}) == 219 and len({path for _, path, _ in rows}) == 219
    assert all(path.endswith(".webp") and bundle.endswith(".rcc") for bundle, path, _ in rows)
