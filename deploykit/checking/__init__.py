"""Parity checks of artifacts against their source, and locating the first diverging layer."""
