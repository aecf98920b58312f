"""Stand-in for the few timm names the official Infinity code imports (see ../README.md)."""
