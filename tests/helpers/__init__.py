"""Test helpers: tiny datasets generated on the fly (no binary data in the repository)."""
