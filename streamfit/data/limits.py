"""The id ranges a packed count key can hold: featurize validates against them, the counting
kernels pack by them."""

# Token-window keys: [k: 7 bits][context: 28 bits][target: 28 bits]. BOS is the largest
# context value, so that it sorts last in its block, where the statistics layout puts it.
TOKEN_BITS = 28
TOKEN_MASK = (1 << TOKEN_BITS) - 1
BOS_KEY = TOKEN_MASK
MAX_TOKEN_ID = TOKEN_MASK - 1
MAX_WINDOW = 127

# Feature keys: [feature: 39 bits][label: 24 bits].
LABEL_BITS = 24
LABEL_MASK = (1 << LABEL_BITS) - 1
MAX_LABEL = LABEL_MASK
MAX_FEATURE = (1 << 39) - 1

# n-gram keys (`--order N`): the N tokens of an n-gram packed oldest first into the low
# 63 bits, ngram_bits(N) bits each; a context token is stored as id + 1 with 0 for BOS
# (before the document start), and the end-of-document token (`--eos`) is the largest value.
MAX_ORDER = 6


def ngram_bits(order: int) -> int:
    """Bits per token of an order-`order` n-gram key."""
    return 63 // order


def max_ngram_token(order: int) -> int:
    """The largest token id an order-`order` n-gram key can hold."""
    return (1 << ngram_bits(order)) - 3
