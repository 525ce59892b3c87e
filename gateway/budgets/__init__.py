"""Budgets and rate limits per API token, user and agent, reserved in the database before a request goes upstream
and settled to its actual cost after (`gateway.budgets.service`)."""
