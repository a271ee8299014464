"""The whole system on one machine: its processes, their supervisor, and the checks
of `sagalab stack up`'s options."""
