"""Route modules: seed-compatible, /v1, health and metrics."""
