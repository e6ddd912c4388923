"""Transformer-base on WMT-14 En->De: the paper's translation table."""
