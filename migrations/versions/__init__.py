"""Migration scripts, named by date and slug."""
