"""Can Qt's platform plugin for this session load? If not, which system packages are missing?

Used by ``scripts/bootstrap.py`` on Linux before it starts the app: a Qt wheel from PyPI carries
Qt itself but not the X11/Wayland client libraries, and when one of them is missing Qt aborts with
a message that often names the wrong library ("xcb-cursor0 or libxcb-cursor0 is needed" when
``libxcb-icccm4`` is what is missing). Here the plugin's real link failures are collected with
``ldd`` (or, without ``ldd``, by loading the plugin in a child process), mapped to the
distribution's package names, and turned into the exact install command.

Standard library only: it runs before the project's dependencies exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Package managers, by the distribution family that uses them.
MANAGERS = ("apt", "dnf", "pacman", "zypper")

#: The shared libraries that Qt 6's xcb and wayland platform plugins link against (beyond glibc,
#: libstdc++ and Qt itself), and the package that provides each one, per package manager:
#: apt = Debian/Ubuntu, dnf = Fedora/RHEL, pacman = Arch, zypper = openSUSE.
PACKAGES: dict[str, dict[str, str]] = {
    # X11 / xcb
    "libxcb.so.1": {"apt": "libxcb1", "dnf": "libxcb", "pacman": "libxcb", "zypper": "libxcb1"},
    "libxcb-cursor.so.0": {
        "apt": "libxcb-cursor0",
        "dnf": "xcb-util-cursor",
        "pacman": "xcb-util-cursor",
        "zypper": "libxcb-cursor0",
    },
    "libxcb-icccm.so.4": {
        "apt": "libxcb-icccm4",
        "dnf": "xcb-util-wm",
        "pacman": "xcb-util-wm",
        "zypper": "libxcb-icccm4",
    },
    "libxcb-keysyms.so.1": {
        "apt": "libxcb-keysyms1",
        "dnf": "xcb-util-keysyms",
        "pacman": "xcb-util-keysyms",
        "zypper": "libxcb-keysyms1",
    },
    "libxcb-image.so.0": {
        "apt": "libxcb-image0",
        "dnf": "xcb-util-image",
        "pacman": "xcb-util-image",
        "zypper": "libxcb-image0",
    },
    "libxcb-render-util.so.0": {
        "apt": "libxcb-render-util0",
        "dnf": "xcb-util-renderutil",
        "pacman": "xcb-util-renderutil",
        "zypper": "libxcb-render-util0",
    },
    "libxcb-util.so.1": {
        "apt": "libxcb-util1",
        "dnf": "xcb-util",
        "pacman": "xcb-util",
        "zypper": "libxcb-util1",
    },
    "libxcb-randr.so.0": {
        "apt": "libxcb-randr0",
        "dnf": "libxcb",
        "pacman": "libxcb",
        "zypper": "libxcb-randr0",
    },
    "libxcb-render.so.0": {
        "apt": "libxcb-render0",
        "dnf": "libxcb",
        "pacman": "libxcb",
        "zypper": "libxcb-render0",
    },
    "libxcb-shape.so.0": {
        "apt": "libxcb-shape0",
        "dnf": "libxcb",
        "pacman": "libxcb",
        "zypper": "libxcb-shape0",
    },
    "libxcb-shm.so.0": {"apt": "libxcb-shm0", "dnf": "libxcb", "pacman": "libxcb", "zypper": "libxcb-shm0"},
    "libxcb-sync.so.1": {
        "apt": "libxcb-sync1",
        "dnf": "libxcb",
        "pacman": "libxcb",
        "zypper": "libxcb-sync1",
    },
    "libxcb-xfixes.so.0": {
        "apt": "libxcb-xfixes0",
        "dnf": "libxcb",
        "pacman": "libxcb",
        "zypper": "libxcb-xfixes0",
    },
    "libxcb-xinerama.so.0": {
        "apt": "libxcb-xinerama0",
        "dnf": "libxcb",
        "pacman": "libxcb",
        "zypper": "libxcb-xinerama0",
    },
    "libxcb-xinput.so.0": {
        "apt": "libxcb-xinput0",
        "dnf": "libxcb",
        "pacman": "libxcb",
        "zypper": "libxcb-xinput0",
    },
    "libxcb-xkb.so.1": {"apt": "libxcb-xkb1", "dnf": "libxcb", "pacman": "libxcb", "zypper": "libxcb-xkb1"},
    "libxcb-glx.so.0": {"apt": "libxcb-glx0", "dnf": "libxcb", "pacman": "libxcb", "zypper": "libxcb-glx0"},
    "libxkbcommon.so.0": {
        "apt": "libxkbcommon0",
        "dnf": "libxkbcommon",
        "pacman": "libxkbcommon",
        "zypper": "libxkbcommon0",
    },
    "libxkbcommon-x11.so.0": {
        "apt": "libxkbcommon-x11-0",
        "dnf": "libxkbcommon-x11",
        "pacman": "libxkbcommon-x11",
        "zypper": "libxkbcommon-x11-0",
    },
    "libX11.so.6": {"apt": "libx11-6", "dnf": "libX11", "pacman": "libx11", "zypper": "libX11-6"},
    "libX11-xcb.so.1": {
        "apt": "libx11-xcb1",
        "dnf": "libX11-xcb",
        "pacman": "libx11",
        "zypper": "libX11-xcb1",
    },
    "libXau.so.6": {"apt": "libxau6", "dnf": "libXau", "pacman": "libxau", "zypper": "libXau6"},
    "libXdmcp.so.6": {"apt": "libxdmcp6", "dnf": "libXdmcp", "pacman": "libxdmcp", "zypper": "libXdmcp6"},
    "libSM.so.6": {"apt": "libsm6", "dnf": "libSM", "pacman": "libsm", "zypper": "libSM6"},
    "libICE.so.6": {"apt": "libice6", "dnf": "libICE", "pacman": "libice", "zypper": "libICE6"},
    # Wayland
    "libwayland-client.so.0": {
        "apt": "libwayland-client0",
        "dnf": "libwayland-client",
        "pacman": "wayland",
        "zypper": "libwayland-client0",
    },
    "libwayland-cursor.so.0": {
        "apt": "libwayland-cursor0",
        "dnf": "libwayland-cursor",
        "pacman": "wayland",
        "zypper": "libwayland-cursor0",
    },
    "libwayland-egl.so.1": {
        "apt": "libwayland-egl1",
        "dnf": "libwayland-egl",
        "pacman": "wayland",
        "zypper": "libwayland-egl1",
    },
    # OpenGL / EGL (libglvnd)
    "libEGL.so.1": {"apt": "libegl1", "dnf": "libglvnd-egl", "pacman": "libglvnd", "zypper": "libEGL1"},
    "libGL.so.1": {"apt": "libgl1", "dnf": "libglvnd-glx", "pacman": "libglvnd", "zypper": "libGL1"},
    "libGLX.so.0": {"apt": "libglx0", "dnf": "libglvnd-glx", "pacman": "libglvnd", "zypper": "libGLX0"},
    "libOpenGL.so.0": {
        "apt": "libopengl0",
        "dnf": "libglvnd-opengl",
        "pacman": "libglvnd",
        "zypper": "libOpenGL0",
    },
    "libGLdispatch.so.0": {
        "apt": "libglvnd0",
        "dnf": "libglvnd",
        "pacman": "libglvnd",
        "zypper": "libglvnd",
    },
    # Fonts, D-Bus, GLib
    "libfontconfig.so.1": {
        "apt": "libfontconfig1",
        "dnf": "fontconfig",
        "pacman": "fontconfig",
        "zypper": "libfontconfig1",
    },
    "libfreetype.so.6": {
        "apt": "libfreetype6",
        "dnf": "freetype",
        "pacman": "freetype2",
        "zypper": "libfreetype6",
    },
    "libdbus-1.so.3": {"apt": "libdbus-1-3", "dnf": "dbus-libs", "pacman": "dbus", "zypper": "libdbus-1-3"},
    "libglib-2.0.so.0": {"apt": "libglib2.0-0", "dnf": "glib2", "pacman": "glib2", "zypper": "libglib-2_0-0"},
    "libz.so.1": {"apt": "zlib1g", "dnf": "zlib", "pacman": "zlib", "zypper": "libz1"},
    "libzstd.so.1": {"apt": "libzstd1", "dnf": "libzstd", "pacman": "zstd", "zypper": "libzstd1"},
    "libgthread-2.0.so.0": {
        "apt": "libglib2.0-0",
        "dnf": "glib2",
        "pacman": "glib2",
        "zypper": "libgthread-2_0-0",
    },
}

#: How to ask each package manager which package ships a file (for libraries not in the table).
PROVIDES_HINT = {
    "apt": "apt-file search {soname}",
    "dnf": "dnf provides '*/{soname}'",
    "pacman": "pacman -F {soname}",
    "zypper": "zypper search --provides {soname}",
}

#: The distribution ids (os-release ID / ID_LIKE) of each package manager's family.
_FAMILY_IDS = {
    "apt": ("debian", "ubuntu", "linuxmint", "pop", "elementary", "raspbian", "kali", "neon"),
    "dnf": ("fedora", "rhel", "centos", "rocky", "almalinux", "ol", "amzn", "nobara"),
    "pacman": ("arch", "manjaro", "endeavouros", "garuda", "artix", "cachyos"),
    "zypper": ("opensuse", "suse", "opensuse-leap", "opensuse-tumbleweed", "sles", "sled"),
}

#: Qt platforms that open no window on a display server: nothing to check.
_HEADLESS_PLATFORMS = ("offscreen", "minimal", "minimalegl", "vnc", "linuxfb", "eglfs", "vkkhrdisplay")

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$", re.MULTILINE)
_LOADER_MISSING = re.compile(r"(\S+\.so(?:\.\d+)*): cannot open shared object file")


def parse_os_release(text: str) -> dict[str, str]:
    """The KEY=value pairs of an os-release file (values unquoted)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        fields[key.strip()] = value
    return fields


def read_os_release() -> dict[str, str]:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            return parse_os_release(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return {}


def package_manager(os_release: dict[str, str]) -> str | None:
    """apt, dnf, pacman or zypper, from os-release's ID then ID_LIKE; None when unknown."""
    ids = [os_release.get("ID", "").lower(), *os_release.get("ID_LIKE", "").lower().split()]
    for distro_id in ids:
        for manager, family in _FAMILY_IDS.items():
            if distro_id in family or (manager == "zypper" and distro_id.startswith("opensuse")):
                return manager
    return None


def parse_ldd_not_found(text: str) -> list[str]:
    """The libraries that ``ldd`` reports as "not found", once each, in the order listed."""
    seen: dict[str, None] = {}
    for match in _NOT_FOUND.finditer(text):
        seen.setdefault(match.group(1), None)
    return list(seen)


def packages_for(sonames: list[str], manager: str | None) -> tuple[list[str], list[str]]:
    """(packages to install, libraries with no known package), each once, in order."""
    packages: dict[str, None] = {}
    unknown: list[str] = []
    for soname in sonames:
        package = PACKAGES.get(soname, {}).get(manager or "")
        if package:
            packages.setdefault(package, None)
        else:
            unknown.append(soname)
    return list(packages), unknown


def install_command(manager: str, packages: list[str], *, assume_yes: bool = False) -> list[str]:
    """The command that installs ``packages`` (without sudo)."""
    if manager == "apt":
        return ["apt-get", "install", *(["-y"] if assume_yes else []), *packages]
    if manager == "dnf":
        return ["dnf", "install", *(["-y"] if assume_yes else []), *packages]
    if manager == "pacman":
        return ["pacman", "-S", "--needed", *(["--noconfirm"] if assume_yes else []), *packages]
    if manager == "zypper":
        return ["zypper", *(["--non-interactive"] if assume_yes else []), "install", *packages]
    raise ValueError(f"unknown package manager {manager!r}")


def session_platforms(environ: Mapping[str, str]) -> list[str] | None:
    """The windowing platforms Qt will try for this session, in its order of preference.

    None: nothing to check (a headless platform was asked for). An empty list: no display at all.
    Qt 6 tries wayland first when WAYLAND_DISPLAY is set or XDG_SESSION_TYPE is wayland, then
    xcb when DISPLAY is set, and falls back from one to the next; QT_QPA_PLATFORM overrides it.
    """
    requested = environ.get("QT_QPA_PLATFORM", "").strip()
    if requested:
        names = [part.split(":", 1)[0].strip().lower() for part in requested.split(";") if part.strip()]
        if not names or names[0] in _HEADLESS_PLATFORMS:
            return None
        return [name for name in names if name == "xcb" or name.startswith("wayland")] or None
    platforms = []
    if environ.get("WAYLAND_DISPLAY") or environ.get("XDG_SESSION_TYPE") == "wayland":
        platforms.append("wayland")
    if environ.get("DISPLAY"):
        platforms.append("xcb")
    return platforms


def plugin_files(qt_dir: Path, platform: str) -> list[Path]:
    """The platform plugin of ``platform`` in a Qt tree (PySide6/Qt) and its Qt support library."""
    platforms_dir = qt_dir / "plugins" / "platforms"
    if platform == "xcb":
        files = [platforms_dir / "libqxcb.so", *sorted((qt_dir / "lib").glob("libQt6XcbQpa.so*"))[:1]]
    else:
        exact = platforms_dir / f"libq{platform}.so"
        plugins = [exact] if exact.exists() else sorted(platforms_dir.glob("libqwayland*.so"))[:1]
        files = [*plugins, *sorted((qt_dir / "lib").glob("libQt6WaylandClient.so*"))[:1]]
    return [path for path in files if path.exists()]


@dataclass
class PluginCheck:
    """Whether one platform plugin loads; when not, why."""

    platform: str
    files: list[Path]
    missing: list[str] = field(default_factory=list)  # sonames the dynamic loader cannot find
    error: str = ""  # the loader's own message when it failed for another reason

    @property
    def ok(self) -> bool:
        return bool(self.files) and not self.missing and not self.error


def _ldd(path: Path) -> str | None:
    ldd = shutil.which("ldd")
    if not ldd:
        return None
    try:
        result = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout + result.stderr


def _load_error(path: Path) -> str:
    """Load ``path`` in a child process (a failed load can leave state behind); '' when it loads."""
    code = "import ctypes, sys\nctypes.CDLL(sys.argv[1])"
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if result.returncode == 0:
        return ""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("OSError: ") if lines else f"exit status {result.returncode}"


def check_plugin(qt_dir: Path, platform: str) -> PluginCheck:
    files = plugin_files(qt_dir, platform)
    check = PluginCheck(platform, files)
    if not files:
        check.error = f"Qt's {platform} platform plugin is not in {qt_dir / 'plugins' / 'platforms'}"
        return check
    missing: dict[str, None] = {}
    for path in files:
        output = _ldd(path)
        if output is not None:
            missing.update(dict.fromkeys(parse_ldd_not_found(output)))
    check.missing = list(missing)
    if not check.missing:
        # The loader has the last word (ldd is absent on some systems; a library can also be found
        # but unusable, e.g. too old for a versioned symbol).
        error = _load_error(files[0])
        found = _LOADER_MISSING.search(error)
        if found:
            check.missing = [found.group(1)]
        else:
            check.error = error
    return check


PLATFORM_NAMES = {"xcb": "xcb (X11)", "wayland": "wayland"}


def describe_failure(check: PluginCheck, manager: str | None) -> tuple[list[str], list[str]]:
    """Lines explaining why ``check`` failed, and the packages that would fix it."""
    name = PLATFORM_NAMES.get(check.platform, check.platform)
    if not check.missing:
        return [f"Qt's {name} platform plugin cannot load: {check.error}"], []
    packages, unknown = packages_for(check.missing, manager)
    lines = [
        f"Qt's {name} platform plugin needs system libraries that are not installed:",
        "    " + ", ".join(check.missing),
    ]
    if unknown:
        if manager:
            hint = PROVIDES_HINT[manager].format(soname=unknown[0])
            lines.append(f"No package is known here for {', '.join(unknown)}; find it with: {hint}")
        else:
            debian = [PACKAGES[s]["apt"] for s in check.missing if s in PACKAGES]
            lines.append(
                "This distribution's package manager is not known here; install the packages that "
                "provide the libraries above"
                + (f" (on Debian/Ubuntu they are: {' '.join(debian)})." if debian else ".")
            )
    return lines, packages
