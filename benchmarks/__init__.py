"""Quality and speed measurements of mmrec (run as scripts; never asserted in tests)."""
