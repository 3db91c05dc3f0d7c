"""Stand-in for A1111 v1.10's `modules` package (see ../README.md). A1111's modules/ has no
__init__.py (a namespace package); this file only marks the stand-in's folder as a package."""
