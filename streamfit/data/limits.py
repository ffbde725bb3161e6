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
