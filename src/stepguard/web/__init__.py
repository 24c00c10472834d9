"""The portal: templates, static assets, and the web security helpers (headers, CSRF, redirects)."""
