"""The shell around the core: load, decide, save, audit; challenges, grants, sessions, throttle."""
