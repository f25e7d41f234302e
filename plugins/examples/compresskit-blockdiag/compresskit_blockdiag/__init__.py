"""Example third-party plugin for compresskit: a block-diagonal approximation of linear layers."""
