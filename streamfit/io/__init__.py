"""Input and output: Parquet reading and crash-safe, checksummed files."""
