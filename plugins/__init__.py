"""compresskit's built-in plugins (installed as the import package ``compresskit_plugins``).

Each plugin uses only compresskit's public API and registers its components through the same hooks a
third-party plugin would use.
"""
