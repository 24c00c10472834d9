"""Stepguard: step-up authentication in front of any web application."""

__version__ = "0.1.0"
