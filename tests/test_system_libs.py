"""The set-up's check of Qt's platform plugin (scripts/system_libs.py, scripts/bootstrap.py): parsing
ldd's output, mapping missing libraries to each distribution's packages, the install command, and
the extras bookkeeping that keeps the run environment lean."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


system_libs = _load("system_libs")
bootstrap = _load("bootstrap")  # imports system_libs by name: loaded above

# ldd on PySide6 6.11's libqxcb.so on Debian 12 without libxcb-icccm4 and libxcb-keysyms1
# (abridged; ldd lists a library once per library that needs it).
LDD_WITHOUT_ICCCM_AND_KEYSYMS = """\
\tlinux-vdso.so.1 (0x00007ff4ef3aa000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007ff4eee00000)
\tlibxkbcommon-x11.so.0 => /lib/x86_64-linux-gnu/libxkbcommon-x11.so.0 (0x00007ff4ef1f9000)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007ff4ef1f2000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-util.so.1 => /lib/x86_64-linux-gnu/libxcb-util.so.1 (0x00007ff4ef1ea000)
\tlibxcb-keysyms.so.1 => not found
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007ff4ef15f000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ff4ed41e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007ff4ef3ac000)
"""

LDD_WITHOUT_XCB_CURSOR = """\
\tlibxcb-cursor.so.0 => not found
\tlibxcb-image.so.0 => /lib/x86_64-linux-gnu/libxcb-image.so.0 (0x00007f0000000000)
"""


def test_ldd_not_found_lines_are_collected_once_in_order() -> None:
    assert system_libs.parse_ldd_not_found(LDD_WITHOUT_ICCCM_AND_KEYSYMS) == [
        "libxcb-icccm.so.4",
        "libxcb-keysyms.so.1",
    ]
    assert system_libs.parse_ldd_not_found(LDD_WITHOUT_XCB_CURSOR) == ["libxcb-cursor.so.0"]
    assert system_libs.parse_ldd_not_found("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n") == []
    assert system_libs.parse_ldd_not_found("\tnot a dynamic executable\n") == []


@pytest.mark.parametrize(
    ("manager", "packages"),
    [
        ("apt", ["libxcb-icccm4", "libxcb-keysyms1"]),
        ("dnf", ["xcb-util-wm", "xcb-util-keysyms"]),
        ("pacman", ["xcb-util-wm", "xcb-util-keysyms"]),
        ("zypper", ["libxcb-icccm4", "libxcb-keysyms1"]),
    ],
)
def test_the_two_missing_libraries_map_to_each_distributions_packages(manager: str, packages) -> None:
    missing = system_libs.parse_ldd_not_found(LDD_WITHOUT_ICCCM_AND_KEYSYMS)
    assert system_libs.packages_for(missing, manager) == (packages, [])


@pytest.mark.parametrize(
    ("manager", "package"),
    [
        ("apt", "libxcb-cursor0"),
        ("dnf", "xcb-util-cursor"),
        ("pacman", "xcb-util-cursor"),
        ("zypper", "libxcb-cursor0"),
    ],
)
def test_xcb_cursor_maps_to_its_package(manager: str, package: str) -> None:
    missing = system_libs.parse_ldd_not_found(LDD_WITHOUT_XCB_CURSOR)
    assert system_libs.packages_for(missing, manager) == ([package], [])


def test_libraries_sharing_a_package_ask_for_it_once_and_unknown_ones_are_reported() -> None:
    missing = ["libxcb-randr.so.0", "libxcb-shape.so.0", "libfoo.so.3"]
    assert system_libs.packages_for(missing, "dnf") == (["libxcb"], ["libfoo.so.3"])
    assert system_libs.packages_for(missing, None) == ([], missing)


def test_every_library_has_a_package_for_every_manager() -> None:
    for soname, packages in system_libs.PACKAGES.items():
        assert soname.startswith("lib")
        assert ".so." in soname
        assert set(packages) == set(system_libs.MANAGERS), soname
        assert all(name and " " not in name for name in packages.values()), soname


@pytest.mark.parametrize(
    ("os_release", "manager"),
    [
        ('ID=debian\nVERSION_ID="12"\n', "apt"),
        ("ID=ubuntu\nID_LIKE=debian\n", "apt"),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "apt"),
        ("ID=fedora\n", "dnf"),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "dnf"),
        ("ID=arch\n", "pacman"),
        ("ID=manjaro\nID_LIKE=arch\n", "pacman"),
        ('ID="opensuse-tumbleweed"\nID_LIKE="opensuse suse"\n', "zypper"),
        ("# comment\nID=nixos\n", None),
        ("", None),
    ],
)
def test_package_manager_from_os_release(os_release: str, manager: str | None) -> None:
    assert system_libs.package_manager(system_libs.parse_os_release(os_release)) == manager


def test_install_commands() -> None:
    packages = ["a", "b"]
    assert system_libs.install_command("apt", packages) == ["apt-get", "install", "a", "b"]
    assert system_libs.install_command("apt", packages, assume_yes=True) == [
        "apt-get",
        "install",
        "-y",
        "a",
        "b",
    ]
    assert system_libs.install_command("dnf", packages) == ["dnf", "install", "a", "b"]
    assert system_libs.install_command("pacman", packages, assume_yes=True) == [
        "pacman",
        "-S",
        "--needed",
        "--noconfirm",
        "a",
        "b",
    ]
    assert system_libs.install_command("zypper", packages, assume_yes=True) == [
        "zypper",
        "--non-interactive",
        "install",
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    ("environ", "platforms"),
    [
        ({"DISPLAY": ":0"}, ["xcb"]),
        ({"WAYLAND_DISPLAY": "wayland-0"}, ["wayland"]),
        ({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}, ["wayland", "xcb"]),
        ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"}, ["wayland", "xcb"]),
        ({}, []),
        ({"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"}, None),
        ({"QT_QPA_PLATFORM": "minimal"}, None),
        ({"QT_QPA_PLATFORM": "xcb", "WAYLAND_DISPLAY": "wayland-0"}, ["xcb"]),
        ({"QT_QPA_PLATFORM": "wayland;xcb"}, ["wayland", "xcb"]),
        ({"QT_QPA_PLATFORM": "xcb:nomitshm"}, ["xcb"]),
    ],
)
def test_platforms_qt_will_try(environ: dict[str, str], platforms: list[str] | None) -> None:
    assert system_libs.session_platforms(environ) == platforms


def _fake_qt_tree(root: Path) -> Path:
    """A venv layout with (empty) plugin files; the check reads them only through ldd (faked)."""
    qt = root / "lib" / "python3.11" / "site-packages" / "PySide6" / "Qt"
    (qt / "plugins" / "platforms").mkdir(parents=True)
    (qt / "lib").mkdir()
    (qt / "plugins" / "platforms" / "libqxcb.so").touch()
    (qt / "lib" / "libQt6XcbQpa.so.6").touch()
    return qt


def test_set_up_names_the_missing_packages_and_stops_before_qt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not root and no terminal to ask at: the exact command is printed, nothing is installed."""
    _fake_qt_tree(tmp_path)
    monkeypatch.setattr(bootstrap, "VENV", tmp_path)
    monkeypatch.setattr(system_libs, "_ldd", lambda path: LDD_WITHOUT_ICCCM_AND_KEYSYMS)
    monkeypatch.setattr(system_libs, "read_os_release", lambda: {"ID": "fedora"})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("SCOUT_SKIP_QT_CHECK", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("XDG_SESSION_TYPE", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # no terminal: no question, no sudo
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail(f"ran {a}"))

    assert bootstrap.check_qt_platform() == bootstrap.EXIT_SYSTEM_LIBS

    err = capsys.readouterr().err
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in err
    assert "    sudo dnf install xcb-util-wm xcb-util-keysyms\n" in err


@pytest.mark.parametrize(
    ("stamp", "extras", "install"),
    [
        ({}, set(), []),  # first `make run`: no dev tools
        ({}, {"dev"}, ["dev"]),  # first `make test`
        ({"project": "p", "backend": "cpu", "extras": []}, set(), None),  # run after run
        ({"project": "p", "backend": "cpu", "extras": []}, {"dev"}, ["dev"]),  # test after run
        ({"project": "p", "backend": "cpu", "extras": ["dev"]}, set(), None),  # run after test
        ({"project": "p", "backend": "cpu", "extras": ["dev"]}, {"dev"}, None),  # test after test
        ({"project": "p", "backend": "cuda", "extras": ["dev"]}, set(), ["dev"]),  # new backend
        ({"project": "old", "backend": "cpu", "extras": ["dev"]}, set(), []),  # project changed
    ],
)
def test_extras_are_recorded_so_run_and_test_alternate_without_reinstalling(
    stamp: dict, extras: set[str], install: list[str] | None
) -> None:
    assert bootstrap.extras_to_install(stamp, {"project": "p", "backend": "cpu"}, extras) == install


def _direct_dependencies(path: Path) -> list[str]:
    result = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True)
    return [line.split("[", 1)[1].rstrip("]") for line in result.stdout.splitlines() if "(NEEDED)" in line]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb/wayland plugins are Linux only")
@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")
def test_the_table_knows_every_system_library_qt_links_against() -> None:
    """When a PySide6 update makes Qt link against a new system library, the table must learn it."""
    import PySide6

    qt = Path(PySide6.__file__).resolve().parent / "Qt"
    files = [
        *system_libs.plugin_files(qt, "xcb"),
        *system_libs.plugin_files(qt, "wayland"),
        *(qt / "lib").glob("libQt6Gui.so.*"),
        *(qt / "lib").glob("libQt6Core.so.*"),
        *(qt / "lib").glob("libQt6Widgets.so.*"),
        *(qt / "lib").glob("libQt6DBus.so.*"),
    ]
    assert len(files) >= 8
    bundled = {path.name for path in (qt / "lib").iterdir()}
    base = (
        "ld-linux",
        "libc.so",
        "libm.so",
        "libstdc++.so",
        "libgcc_s.so",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    )
    needed = {name for path in files for name in _direct_dependencies(path)}
    system = {name for name in needed if name not in bundled and not name.startswith(base)}
    assert "libxcb-icccm.so.4" in system
    assert sorted(system - set(system_libs.PACKAGES)) == []
