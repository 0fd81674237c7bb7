"""The kernel cache (kernels.build.load): only a library this user built, in directories no one else can write, is
loaded; anything else at the cache's path is rebuilt, or the kernels are built privately for the process."""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobilenet_v1.files import sha256_of
from mobilenet_v1.kernels import build


def _builds_kernels() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return platform.machine() == "x86_64" and build._compiler() is not None and {"avx2", "fma"} <= set(flags)


needs_kernels = pytest.mark.skipif(
    not _builds_kernels(), reason="the kernels are built only on x86-64 Linux with AVX2 + FMA and a C compiler"
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="planting a file of another user takes os.chown, which needs root (CI runs as root)"
)
NOBODY = 65534

pytestmark = needs_kernels


@pytest.fixture(autouse=True)
def _fresh_load():
    """load() is cached per process: each test loads afresh, with its own environment, and leaves no library
    behind for the tests that follow."""
    build.load.cache_clear()
    yield
    build.load.cache_clear()


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    path = tmp_path / "cache"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(path))
    return path


def _shared_object(tmp_path: Path, source: str) -> Path:
    """``source`` compiled with the system's C compiler into a shared object."""
    c_file = tmp_path / "planted.c"
    c_file.write_text(source)
    out = tmp_path / "planted.so"
    subprocess.run([build._compiler(), "-shared", "-fPIC", str(c_file), "-o", str(out)], check=True)
    return out


def _impostor(tmp_path: Path, marker: Path) -> Path:
    """A library with every function the kernels have, whose constructor writes ``marker`` when it is loaded."""
    functions = "".join(f"int {name}(void) {{ return 0; }}\n" for name in build._SIGNATURES)
    constructor = f"""#include <stdio.h>
__attribute__((constructor)) static void planted(void) {{
    FILE *f = fopen("{marker}", "w");
    if (f) {{ fputs("ran as another user's code\\n", f); fclose(f); }}
}}
"""
    return _shared_object(tmp_path, constructor + functions)


def _record(lib_path: Path) -> None:
    """Write the SHA-256 beside the library, as a build of load()'s does."""
    build._digest_path(lib_path).write_text(sha256_of(lib_path) + "\n")


def _works(lib) -> None:
    """The kernels' Aᵀ·B on a small product: the real compiled kernels, not stand-ins."""
    assert lib is not None
    a, b = torch.randn(9, 5), torch.randn(9, 7)
    c = torch.empty(5, 7)
    build._call(lib.gemm_at_b, a.data_ptr(), 5, b.data_ptr(), 7, c.data_ptr(), 9, 5, 7, None, None, None)
    torch.testing.assert_close(c, a.t() @ b)


def _kept(lib_path: Path) -> None:
    """A build kept in the cache: kernels/ of mode 0700 holding the library (ours, not writable by others) and its
    SHA-256, and nothing else (the sources and the output were written in a private directory, since removed)."""
    kernels = lib_path.parent
    assert kernels.stat().st_mode & 0o777 == 0o700
    assert sorted(kernels.iterdir()) == [lib_path, build._digest_path(lib_path)]
    st = os.lstat(lib_path)
    assert st.st_uid == os.geteuid() and not st.st_mode & 0o022
    assert build._digest_path(lib_path).read_text().strip() == sha256_of(lib_path)


def test_a_fresh_build_is_kept_and_loaded_again_unbuilt(cache, monkeypatch):
    _works(build.load())
    lib_path = build.library_path()
    assert lib_path.parent == cache / "kernels"
    _kept(lib_path)
    build.load.cache_clear()
    monkeypatch.setattr(build, "_build", lambda *a: pytest.fail("the kept library was rebuilt"))
    _works(build.load())


@needs_root
@pytest.mark.parametrize("variable", ["MOBILENET_V1_CACHE", "XDG_CACHE_HOME"])
def test_a_library_planted_by_another_user_in_a_shared_cache_is_not_loaded(variable, monkeypatch, tmp_path):
    """The probe's attack: the cache is in a shared directory (world-writable and sticky, like /tmp), and another user
    (nobody) has made the cache's directories and planted a library at the very path load() uses, with every kernel
    function and its SHA-256 recorded beside it; its constructor writes a marker file. load() warns, builds the kernels
    privately, and the marker never appears; the same file, loaded by a Python of its own, does write it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv(variable, str(shared))
    if variable == "XDG_CACHE_HOME":
        monkeypatch.delenv("MOBILENET_V1_CACHE")
    lib_path = build.library_path()
    assert lib_path.is_relative_to(shared)
    marker = tmp_path / "constructor-ran"
    impostor = _impostor(tmp_path, marker)
    for d in reversed([lib_path.parent, *lib_path.parent.parents]):  # the directories below shared, nobody's
        if d.is_relative_to(shared) and d != shared:
            d.mkdir(mode=0o755)
            os.chown(d, NOBODY, NOBODY)
    shutil.copy(impostor, lib_path)
    _record(lib_path)
    for path in (lib_path, build._digest_path(lib_path)):
        os.chown(path, NOBODY, NOBODY)

    with pytest.warns(UserWarning, match="not using the cache"):
        lib = build.load()
    assert not marker.exists()
    _works(lib)
    assert not Path(lib._name).is_relative_to(shared)
    assert os.lstat(lib_path).st_uid == NOBODY  # left as it was: not ours to remove

    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(lib_path)!r})"], check=True)
    assert marker.exists()  # the control: what was refused would have run


@needs_root
def test_a_library_of_another_user_in_our_own_cache_is_rebuilt(cache, tmp_path):
    """A library of nobody's at the library's path in our own kernels/ (left from when the directory was open to
    others), with the right SHA-256 recorded: not loaded (its constructor never runs), but replaced by our build."""
    lib_path = build.library_path()
    lib_path.parent.mkdir(mode=0o700)
    marker = tmp_path / "constructor-ran"
    shutil.copy(_impostor(tmp_path, marker), lib_path)
    _record(lib_path)
    os.chown(lib_path, NOBODY, NOBODY)

    with pytest.warns(UserWarning, match=f"of uid {NOBODY}; rebuilding it"):
        lib = build.load()
    assert not marker.exists()
    _works(lib)
    _kept(lib_path)


@pytest.mark.parametrize("kind", ["empty", "empty, recorded", "missing functions, recorded"])
def test_a_library_that_is_not_the_build_is_rebuilt(kind, cache, tmp_path):
    """What a crash, a full disk or an older build leaves at the library's path, our own: a 0-byte file (which once
    turned the kernels off for good), one whose SHA-256 is recorded (so the loader itself refuses it), a library
    that loads but lacks kernel functions. Each is replaced by a build that loads, with no traceback."""
    lib_path = build.library_path()
    lib_path.parent.mkdir(mode=0o700)
    if kind.startswith("empty"):
        lib_path.write_bytes(b"")
    else:
        shutil.copy(_shared_object(tmp_path, "int bn_relu_stats(void) { return 0; }\n"), lib_path)
    if kind.endswith("recorded"):
        _record(lib_path)

    _works(build.load())
    _kept(lib_path)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_cache_others_can_write_to_builds_privately_with_a_warning(mode, cache):
    """A cache directory that other users can write to (group, others, or all with the sticky bit): load() writes
    nothing into it, warns why, and the kernels are built in a private directory, removed once they are loaded."""
    cache.chmod(mode)
    with pytest.warns(UserWarning, match=f"{cache} is writable by other users"):
        lib = build.load()
    _works(lib)
    assert list(cache.iterdir()) == []
    assert not Path(lib._name).is_relative_to(cache) and not Path(lib._name).parent.exists()
