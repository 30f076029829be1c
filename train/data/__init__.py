"""The data path: sources -> formats -> validation -> template + labels -> overlong handling -> packing -> cache."""

IGNORE_INDEX = -100  # the label of a token that trains nothing (PyTorch's cross-entropy ignore_index)
