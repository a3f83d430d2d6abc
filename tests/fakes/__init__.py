"""In-memory fakes of external services used by the unit tests (OMERO)."""
