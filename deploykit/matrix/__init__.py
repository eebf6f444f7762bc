"""Deploykit matrix: cells, executors, store, report."""
