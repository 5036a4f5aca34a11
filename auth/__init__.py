"""Authentication: users, roles, JWTs."""
