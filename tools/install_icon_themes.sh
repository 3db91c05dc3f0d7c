#!/usr/bin/env bash
# Installs what the icon-theme dataset builder (python -m style_components.train.dataset) reads:
# the rasteriser (rsvg-convert, from librsvg2-bin) and the 19 Debian icon themes listed in
# style_components/train/config.py. Used by the data builder only, never by the tests.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
THEMES=(
  adwaita-icon-theme breeze-icon-theme deepin-icon-theme elementary-icon-theme
  elementary-xfce-icon-theme faba-icon-theme faenza-icon-theme gnome-icon-theme
  gnome-brave-icon-theme gnome-dust-icon-theme gnome-human-icon-theme gnome-wise-icon-theme
  mate-icon-theme moka-icon-theme numix-icon-theme-circle oxygen-icon-theme paper-icon-theme
  papirus-icon-theme tango-icon-theme
)
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends librsvg2-bin "${THEMES[@]}"
command -v rsvg-convert >/dev/null
echo "installed librsvg2-bin and ${#THEMES[@]} icon themes"
