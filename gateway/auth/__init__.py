"""Who is calling: passwords, tokens, JWTs, sessions and principals."""
