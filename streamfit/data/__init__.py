"""Featurizing: Arrow record batches to validated numpy example arrays."""
