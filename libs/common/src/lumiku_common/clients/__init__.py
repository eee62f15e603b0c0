"""Typed clients of other services' `/internal/` routes, shared by every service that calls them."""
