"""The native kernels' cache loads only what this user built (issue #18: a planted library ran at import).

Each test loads the kernels afresh in this process (``_lib``/``_tried`` reset, as a new worker would) with
``EMBADVISOR_NATIVE_CACHE`` in a temporary folder. The planted library is a tiny C library whose
constructor writes a marker file when it is loaded: the marker must never appear.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embadvisor.kernels import native

_PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *marker = getenv("EA_PLANTED_MARKER");
    FILE *f = marker ? fopen(marker, "w") : NULL;
    if (f) { fputs("the planted library ran\n", f); fclose(f); }
}
long ea_abi_version(void) { return %d; }
"""


def _need_compiler() -> str:
    cc = native._compiler()
    if cc is None:
        msg = "no C compiler: the native kernels are never built here"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return cc


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared library whose constructor writes ``$EA_PLANTED_MARKER``, checked to do so in a child process."""
    cc = _need_compiler()
    folder = tmp_path_factory.mktemp("planted")
    src, lib = folder / "planted.c", folder / "planted.so"
    src.write_text(_PLANTED_C % native._ABI)
    res = subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot build the planted library: {res.stderr.strip()}")
    marker = folder / "sanity-marker"
    env = {**os.environ, "EA_PLANTED_MARKER": str(marker)}
    subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(lib)],
                   env=env, check=True)
    assert marker.exists(), "the planted library's constructor must write the marker when it is loaded"
    return lib


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache folder (not created yet) and a marker path for the planted library."""
    _need_compiler()
    folder = tmp_path / "cache"
    monkeypatch.setenv("EMBADVISOR_NATIVE_CACHE", str(folder))
    monkeypatch.setenv("EA_PLANTED_MARKER", str(tmp_path / "MARKER"))
    monkeypatch.delenv("EMBADVISOR_NATIVE", raising=False)
    monkeypatch.setattr(native, "_lib", None)  # restored after the test: later tests keep the process's library
    monkeypatch.setattr(native, "_tried", False)
    return folder


def _predictable_name() -> str:
    """The cached library's name (source, compiler version, platform, CPU), computed as the module computes it."""
    cc = native._compiler()
    assert cc is not None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(native._SOURCE.read_bytes() + version.encode() + sys.platform.encode()
                         + native._cpu_id().encode()).hexdigest()[:16]
    return f"embadvisor_native_{key}.so"


def _load(monkeypatch: pytest.MonkeyPatch) -> tuple[bool, list[str], int]:
    """Load the kernels as a new process would: (available, warning texts, compiler runs that built them)."""
    builds = []
    run = subprocess.run

    def counting(args, *a, **kw):  # type: ignore[no-untyped-def]
        if "-shared" in args:
            builds.append(args)
        return run(args, *a, **kw)

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    with monkeypatch.context() as m, warnings.catch_warnings(record=True) as caught:
        m.setattr(native.subprocess, "run", counting)
        warnings.simplefilter("always")
        ok = native.available()
    return ok, [str(w.message) for w in caught], len(builds)


def _kernels_work() -> None:
    assert native._lib is not None
    table, idx = torch.randn(50, 8), torch.randint(0, 50, (7, 3))
    with torch.no_grad():
        assert torch.equal(native.embedding(idx, table), F.embedding(idx, table))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sidecar(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _genuine(lib: Path) -> bool:
    """A regular file of ours, 0600, whose sha256 is the one its sidecar records."""
    st, side = os.lstat(lib), _sidecar(lib)
    return (stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and not side.is_symlink()
            and side.read_text().split()[0] == _sha(lib))


def _marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def test_build_then_reuse_without_recompiling(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nested = cache / "a" / "b"
    monkeypatch.setenv("EMBADVISOR_NATIVE_CACHE", str(nested))
    ok, warned, builds = _load(monkeypatch)
    assert ok and warned == [] and builds >= 1
    _kernels_work()
    for folder in (cache, cache / "a", nested):  # every folder we created is 0700
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    lib = nested / _predictable_name()
    assert _genuine(lib) and stat.S_IMODE(_sidecar(lib).stat().st_mode) == 0o600
    assert not [p for p in nested.iterdir() if p.name.startswith(".build-")]  # the build folder is gone
    before = lib.stat()
    ok, warned, builds = _load(monkeypatch)
    assert ok and warned == [] and builds == 0  # the second load does not recompile
    after = lib.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    _kernels_work()


@pytest.mark.parametrize("how", ["no_sidecar", "sidecar_in_group_writable_folder", "sidecar_in_world_writable_folder"])
def test_a_planted_library_is_never_loaded(cache: Path, planted: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    cache.mkdir(mode=0o700)
    lib = cache / _predictable_name()
    shutil.copyfile(planted, lib)
    os.chmod(lib, 0o600)
    if how != "no_sidecar":  # whoever can write the folder can write the sidecar too
        _sidecar(lib).write_text(f"{_sha(lib)}  {lib.name}\n")
        os.chmod(_sidecar(lib), 0o600)
        os.chmod(cache, 0o770 if how == "sidecar_in_group_writable_folder" else 0o777)
    ok, warned, _ = _load(monkeypatch)
    assert not _marker(tmp_path).exists(), "the planted library was loaded"
    assert ok
    _kernels_work()
    if how == "no_sidecar":  # the folder is ours: the file under the library's name was rebuilt
        assert _genuine(lib) and lib.read_bytes() != planted.read_bytes()
    else:  # an unsafe folder is not used at all (built privately), and named in the warning with the fix
        assert len(warned) == 1 and repr(str(cache)) in warned[0] and "chmod go-w" in warned[0]
        assert lib.read_bytes() == planted.read_bytes()


@pytest.mark.parametrize("mode", [0o720, 0o702, 0o777, 0o1777], ids=oct)
def test_a_cache_folder_writable_by_others_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    cache.mkdir()
    os.chmod(cache, mode)
    ok, warned, builds = _load(monkeypatch)
    assert ok and builds >= 1  # built in a private temporary folder instead
    _kernels_work()
    assert len(warned) == 1 and repr(str(cache)) in warned[0] and "writable by group or others" in warned[0]
    assert "EMBADVISOR_NATIVE_CACHE" in warned[0] and "chmod go-w" in warned[0]
    assert list(cache.iterdir()) == []  # nothing written into it


@pytest.mark.parametrize("sticky", [False, True])
def test_a_parent_folder_writable_by_others_is_refused_unless_sticky(cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      sticky: bool) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o1777 if sticky else 0o777)  # like /tmp with or without its sticky bit
    monkeypatch.setenv("EMBADVISOR_NATIVE_CACHE", str(parent / "mine"))
    ok, warned, _ = _load(monkeypatch)
    assert ok
    _kernels_work()
    if sticky:
        assert warned == [] and _genuine(parent / "mine" / _predictable_name())
    else:
        assert len(warned) == 1 and repr(str(parent)) in warned[0] and "sticky" in warned[0]
        assert not (parent / "mine" / _predictable_name()).exists()


def test_a_cache_folder_owned_by_another_user_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(cache, 65534, 65534)  # nobody
    else:  # without root, pretend to be someone else: then the folder (or one above it) is another user's
        monkeypatch.setattr(native, "_my_uid", lambda: os.geteuid() + 1)
    ok, warned, _ = _load(monkeypatch)
    assert len(warned) == 1 and "owned by uid" in warned[0] and "EMBADVISOR_NATIVE_CACHE" in warned[0]
    assert list(cache.iterdir()) == []
    if os.geteuid() == 0:
        assert ok and repr(str(cache)) in warned[0]
        _kernels_work()


def test_a_library_whose_hash_does_not_match_is_refused(cache: Path, planted: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _load(monkeypatch)[0]
    lib = cache / _predictable_name()
    swap = cache / "swap.tmp"
    shutil.copyfile(planted, swap)
    os.chmod(swap, 0o600)
    os.replace(swap, lib)  # our own file, 0600, but not what was built
    ok, warned, builds = _load(monkeypatch)
    assert not _marker(tmp_path).exists(), "the library with the wrong sha256 was loaded"
    assert ok and builds >= 1
    _kernels_work()
    assert len(warned) == 1 and "sha256" in warned[0] and repr(str(lib)) in warned[0]
    assert _genuine(lib)


@pytest.mark.parametrize("which", ["library", "sidecar"])
def test_a_symbolic_link_is_refused(cache: Path, planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    which: str) -> None:
    cache.mkdir(mode=0o700)
    lib = cache / _predictable_name()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    target = elsewhere / ("lib.so" if which == "library" else "lib.so.sha256")
    if which == "library":  # a link to the planted library, with its true sha256 beside it
        shutil.copyfile(planted, target)
        os.chmod(target, 0o600)
        _sidecar(lib).write_text(f"{_sha(target)}  {lib.name}\n")
        os.chmod(_sidecar(lib), 0o600)
        lib.symlink_to(target)
    else:  # a genuine build whose sidecar is a link to a copy of itself
        assert _load(monkeypatch)[0]
        shutil.copyfile(_sidecar(lib), target)
        os.chmod(target, 0o600)
        _sidecar(lib).unlink()
        _sidecar(lib).symlink_to(target)
    ok, warned, builds = _load(monkeypatch)
    assert not _marker(tmp_path).exists(), "the library behind the link was loaded"
    assert ok and builds >= 1
    _kernels_work()
    named = lib if which == "library" else _sidecar(lib)
    assert len(warned) == 1 and "symbolic link" in warned[0] and repr(str(named)) in warned[0]
    assert not lib.is_symlink() and _genuine(lib)


@pytest.mark.parametrize("problem", ["writable_by_others", "owned_by_another_user"])
def test_a_cached_library_another_user_could_write_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                              problem: str) -> None:
    assert _load(monkeypatch)[0]
    lib = cache / _predictable_name()
    if problem == "writable_by_others":
        os.chmod(lib, 0o666)
    elif os.geteuid() == 0:
        os.chown(lib, 65534, 65534)
    else:
        pytest.skip("giving a file to another user needs root")
    ok, warned, builds = _load(monkeypatch)
    assert ok and builds >= 1
    _kernels_work()
    assert len(warned) == 1 and repr(str(lib)) in warned[0]
    assert ("writable by group or others" if problem == "writable_by_others" else "owned by uid") in warned[0]
    assert _genuine(lib) and lib.stat().st_uid == os.geteuid()


def test_concurrent_builders_compile_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds, libs, errors = [], [], []
    run = subprocess.run

    def counting(args, *a, **kw):  # type: ignore[no-untyped-def]
        if "-shared" in args:
            builds.append(args)
        return run(args, *a, **kw)

    def worker() -> None:
        try:
            libs.append(native._build())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    monkeypatch.setattr(native.subprocess, "run", counting)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and [str(w.message) for w in caught] == []
    assert len(libs) == 3 and all(lib is not None for lib in libs)
    assert len(builds) == 1  # the others waited on the build lock and loaded the checked result
    assert _genuine(cache / _predictable_name())


def test_a_refusal_warns_once_per_process(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    os.chmod(cache, 0o777)
    ok, warned, _ = _load(monkeypatch)
    assert ok and len(warned) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.available()
    assert caught == []
