"""The shell around the core: load state, decide, save, audit; challenges, grants, sessions, throttling."""
