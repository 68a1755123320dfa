"""Command-line entry points: ``vessel`` (the daemon) and ``vessel-ctl`` (admin)."""
