"""The bundled demo: "Acme Bank" behind the Stepguard gateway, on an embedded SQLite store."""
