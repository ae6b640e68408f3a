#!/usr/bin/env sh
# Adds Pneumo Desktop to the desktop's application menu (and `pneumo-desktop` to the PATH), or removes it.
# Run it from the unpacked app folder (the packaged build puts it next to the `pneumo-desktop` executable):
#   ./install-desktop-entry.sh              for the current user (~/.local)
#   sudo ./install-desktop-entry.sh --system   for everybody (/usr/local)
#   ./install-desktop-entry.sh --uninstall  [--system]   remove what the install added
# Nothing is copied except the menu entry, two icons and a symlink: the app stays where it is, so move
# the folder first (e.g. to /opt/pneumo-desktop) and install from there.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
exe="$here/pneumo-desktop"
res="$here/_internal/resources"
prefix="${XDG_DATA_HOME:-$HOME/.local/share}"
bindir="$HOME/.local/bin"
mode=install
for arg in "$@"; do
    case "$arg" in
        --system) prefix=/usr/local/share; bindir=/usr/local/bin ;;
        --uninstall) mode=uninstall ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

apps="$prefix/applications"
icons="$prefix/icons/hicolor"
entry="$apps/pneumo-desktop.desktop"

refresh() {
    command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$apps" || true
    command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$icons" 2>/dev/null || true
}

if [ "$mode" = uninstall ]; then
    rm -f "$entry" "$icons/256x256/apps/pneumo-desktop.png" "$icons/scalable/apps/pneumo-desktop.svg"
    # only our own symlink, never a file somebody else put there
    if [ -L "$bindir/pneumo-desktop" ]; then rm -f "$bindir/pneumo-desktop"; fi
    refresh
    echo "removed the Pneumo Desktop menu entry, icons and symlink from $prefix and $bindir"
    exit 0
fi

if [ ! -x "$exe" ] || [ ! -f "$res/linux/pneumo-desktop.desktop" ]; then
    echo "run this script from the packaged app folder (next to the pneumo-desktop executable)" >&2
    exit 1
fi

mkdir -p "$apps" "$icons/256x256/apps" "$icons/scalable/apps" "$bindir"
cp "$res/icons/app.png" "$icons/256x256/apps/pneumo-desktop.png"
cp "$res/icons/app.svg" "$icons/scalable/apps/pneumo-desktop.svg"
# Absolute path in Exec/TryExec: the menu entry works whether or not $bindir is on the PATH.
# (Quoted for the desktop-entry spec, so folders with spaces work too.)
sed -e "s|^Exec=.*|Exec=\"$exe\" %F|" -e "s|^TryExec=.*|TryExec=$exe|" \
    "$res/linux/pneumo-desktop.desktop" > "$entry"
chmod 644 "$entry"
ln -sfn "$exe" "$bindir/pneumo-desktop"
refresh
echo "installed: $entry"
echo "           icons in $icons, command $bindir/pneumo-desktop -> $exe"
case ":$PATH:" in *":$bindir:"*) ;; *) echo "note: $bindir is not on your PATH; the menu entry works anyway" ;; esac
