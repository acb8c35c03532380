"""The ``kdserve`` command line."""
