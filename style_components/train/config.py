"""The one place that lists the training themes, the held-out split and the image sizes."""

from __future__ import annotations

# The 19 Debian packages whose icon themes are the "artists". Label = package name.
THEME_PACKAGES: tuple[str, ...] = (
    "adwaita-icon-theme", "breeze-icon-theme", "deepin-icon-theme", "elementary-icon-theme",
    "elementary-xfce-icon-theme", "faba-icon-theme", "faenza-icon-theme", "gnome-icon-theme",
    "gnome-brave-icon-theme", "gnome-dust-icon-theme", "gnome-human-icon-theme",
    "gnome-wise-icon-theme", "mate-icon-theme", "moka-icon-theme", "numix-icon-theme-circle",
    "oxygen-icon-theme", "paper-icon-theme", "papirus-icon-theme", "tango-icon-theme",
)

ICON_ROOT = "/usr/share/icons"
IMAGE_SIZE = 64                    # rasterised size of every icon (px, square)
BACKGROUND = (255, 255, 255)       # icons are composited on white, as extract.to_rgb does
MIN_THEMES = 10                    # keep icon names drawn (distinctly) by at least this many themes
SHARD_SIZE = 2048                  # images per .npy shard
SNR_GAMMA = 5.0                    # diffusion trainers' default min-SNR-gamma loss weighting

# Held-out evaluation split: whole name *families* (first word of the icon name: all folder-*
# together), never seen in training. Fixed list, chosen once to hold out about a quarter of
# the images and to include families that the small gnome-colors and Numix-Circle themes draw.
HELDOUT_FAMILIES: frozenset[str] = frozenset({
    "applications", "audio", "camera", "document", "help", "mail", "network", "phone", "printer",
    "view", "web",
})

# Encoder input side (px) by default, and the preprocessing rule an extractor trained at a side is
# saved with (extract.fit_icon: fitted in the square, as the dataset rasterises). `train --size 128` sees more of the drawing.
INPUT_SIZE = 64


def preprocess_name(size: int = INPUT_SIZE) -> str:
    return f"icon{size}"


PREPROCESS_NAME = preprocess_name()


def family(name: str) -> str:
    """Name family: the first dash-separated word ("folder-open" -> "folder")."""
    return name.split("-", 1)[0]


def is_heldout(name: str, heldout_families=HELDOUT_FAMILIES) -> bool:
    """True for icon names whose family is held out of training (evaluation only)."""
    return family(name) in heldout_families
