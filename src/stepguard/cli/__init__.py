"""The `stepguard` command line: serve, demo, config, policy, users, audit, db."""
