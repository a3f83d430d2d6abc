"""Opt-in tests against a real OMERO server."""
