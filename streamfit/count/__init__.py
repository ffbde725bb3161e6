"""Counting: kernels, the count table, out-of-core accumulation, the statistics format and merge."""
