"""Configuration: one typed schema with every default in one place, YAML loading, validation."""
