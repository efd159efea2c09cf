#!/bin/sh
# Install Scout Chat's desktop entry and icons for the current user (no root needed).
#
#   packaging/linux/install-desktop-entry.sh [PATH-TO-scout-chat]     install
#   packaging/linux/install-desktop-entry.sh --uninstall              remove
#
# PATH-TO-scout-chat defaults to the packaged binary (dist/scout-chat/scout-chat) if it exists,
# else to the checkout's .venv/bin/scout-chat (what `make run` sets up), else to `scout-chat` on
# PATH. Files go to ~/.local/share/applications and ~/.local/share/icons/hicolor/<size>/apps
# (XDG_DATA_HOME is honoured). Unless `scout-chat` on PATH already is that program, a launcher
# ~/.local/bin/scout-chat (a symbolic link to it) is added too, so that `scout-chat` works in a
# terminal (XDG_BIN_HOME is honoured).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
bin=${XDG_BIN_HOME:-$HOME/.local/bin}
apps="$data/applications"
icons="$data/icons/hicolor"
sizes="16 32 48 64 128 256"

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$apps/scout-chat.desktop" "$icons/scalable/apps/scout-chat.svg"
    for s in $sizes; do rm -f "$icons/${s}x${s}/apps/scout-chat.png"; done
    # Only a launcher this script made (a link), never a program of the same name.
    [ -L "$bin/scout-chat" ] && rm -f "$bin/scout-chat"
    echo "removed Scout Chat's desktop entry, icons and launcher"
    exit 0
fi

exe=${1:-}
if [ -z "$exe" ]; then
    if [ -x "$root/dist/scout-chat/scout-chat" ]; then
        exe="$root/dist/scout-chat/scout-chat"
    elif [ -x "$root/.venv/bin/scout-chat" ]; then
        exe="$root/.venv/bin/scout-chat"
    elif command -v scout-chat >/dev/null 2>&1; then
        exe=$(command -v scout-chat)
    else
        echo "scout-chat not found: run \`make run\` (or build it: python packaging/build.py) or pass its path" >&2
        exit 1
    fi
fi
if [ ! -x "$exe" ]; then
    echo "$exe is not an executable file" >&2
    exit 1
fi
exe=$(cd "$(dirname "$exe")" && pwd)/$(basename "$exe")

mkdir -p "$apps" "$icons/scalable/apps"
for s in $sizes; do
    mkdir -p "$icons/${s}x${s}/apps"
    cp "$root/assets/icons/scout-chat-$s.png" "$icons/${s}x${s}/apps/scout-chat.png"
done
cp "$root/assets/icons/scout-chat.svg" "$icons/scalable/apps/scout-chat.svg"
# Exec/TryExec point at the absolute path (quoted: it may contain spaces).
sed -e "s|^Exec=scout-chat|Exec=\"$exe\"|" -e "s|^TryExec=scout-chat|TryExec=$exe|" \
    "$here/scout-chat.desktop" > "$apps/scout-chat.desktop"
chmod 0644 "$apps/scout-chat.desktop"

command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$apps" || true
command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$icons" || true
echo "installed $apps/scout-chat.desktop (runs $exe)"

if [ "$(command -v scout-chat 2>/dev/null || true)" != "$exe" ] && [ "$bin/scout-chat" != "$exe" ]; then
    if [ -e "$bin/scout-chat" ] && [ ! -L "$bin/scout-chat" ]; then
        echo "left $bin/scout-chat alone (not a launcher made by this script)" >&2
    else
        mkdir -p "$bin"
        ln -sfn "$exe" "$bin/scout-chat"
        echo "installed $bin/scout-chat (runs $exe)"
        case ":$PATH:" in
            *":$bin:"*) ;;
            *) echo "note: $bin is not on your PATH; add it to run \`scout-chat\` from a terminal" ;;
        esac
    fi
fi
