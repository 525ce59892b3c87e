"""Usage analytics: what each request used, recorded off the hot path, and the queries that sum it up."""
