"""Benchmark cases, FLOP counts and the bench report."""
