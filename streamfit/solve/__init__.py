"""The explicit solution: forms, finalize and the held-out calibration."""
