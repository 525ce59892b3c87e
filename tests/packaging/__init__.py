"""The package as users install it: the wheel's contents, and the installed gateway run end to end."""
