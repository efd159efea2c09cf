#!/bin/sh
# Install Scout Chat's desktop entry and icons for the current user (no root needed).
#
#   packaging/linux/install-desktop-entry.sh [PATH-TO-scout-chat]     install
#   packaging/linux/install-desktop-entry.sh --uninstall              remove
#
# PATH-TO-scout-chat defaults to the packaged binary (dist/scout-chat/scout-chat) if it exists,
# else to `scout-chat` on PATH (pip install). Files go to ~/.local/share/applications and
# ~/.local/share/icons/hicolor/<size>/apps (XDG_DATA_HOME is honoured).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data=${XDG_DATA_HOME:-$HOME/.local/share}
apps="$data/applications"
icons="$data/icons/hicolor"
sizes="16 32 48 64 128 256"

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$apps/scout-chat.desktop" "$icons/scalable/apps/scout-chat.svg"
    for s in $sizes; do rm -f "$icons/${s}x${s}/apps/scout-chat.png"; done
    echo "removed Scout Chat's desktop entry and icons"
    exit 0
fi

exe=${1:-}
if [ -z "$exe" ]; then
    if [ -x "$root/dist/scout-chat/scout-chat" ]; then
        exe="$root/dist/scout-chat/scout-chat"
    elif command -v scout-chat >/dev/null 2>&1; then
        exe=$(command -v scout-chat)
    else
        echo "scout-chat not found: build it (python packaging/build.py) or pass its path" >&2
        exit 1
    fi
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
