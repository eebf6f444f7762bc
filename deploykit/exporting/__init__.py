"""The export pipeline: routing, conversion plans, calibration, precisions."""
