"""sagalab's orchestrator: the saga state machine, flow definitions, store and runtime."""
