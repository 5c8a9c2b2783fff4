"""The ``opsflow`` command line: a client of the API, plus admin and process commands."""
