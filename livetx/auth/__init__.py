"""Who a connection belongs to: dashboard JWTs and hashed Open API keys."""
