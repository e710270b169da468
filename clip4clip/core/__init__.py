"""General utilities every layer may use: atomic writes, safe unpickling, pids, downloads, errors, process settings."""
