"""Per-user Chroma database names: `{namespace}{SEP}{name}`, one-to-one by construction.

The namespace is the user id in lowercase hex. Hex digits never include the separator's characters (`.`, `_`,
`-`: the settings refuse anything else), so a stored name splits back into exactly one (user, name) pair: the
namespace runs up to the first separator character. Ids and names containing the separator cannot collide.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidRequestError

# Chroma's own rule for database and collection names.
CHROMA_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
MIN_NAME = 3
MAX_NAME = 512
DEFAULT_DATABASE = "default_database"
DEFAULT_TENANT = "default_tenant"
# Another user's namespace, should an upstream message ever carry one.
FOREIGN_NAMESPACE = r"[0-9a-f]{2,}{sep}[A-Za-z0-9._-]*"


def check_name(name: str, *, what: str) -> str:
    """`name` when it obeys Chroma's naming rule; a clear 400 otherwise."""
    if not (MIN_NAME <= len(name) <= MAX_NAME and CHROMA_NAME.match(name) and ".." not in name):
        raise InvalidRequestError(
            f"Invalid {what} name {name!r}: use 3-512 characters from [a-zA-Z0-9._-], starting and ending "
            "with a letter or digit, without '..'.",
            code=f"invalid_{what}_name",
            param=what,
        )
    return name


class Namespace:
    """One user's share of the Chroma server."""

    def __init__(self, user_id: str, separator: str) -> None:
        self.prefix = user_id.encode("utf-8").hex() + separator
        self._foreign = re.compile(FOREIGN_NAMESPACE.replace("{sep}", re.escape(separator)))

    def database(self, name: str) -> str:
        """The Chroma name of the user's database `name` (400 if `name` is invalid or too long with the prefix)."""
        check_name(name, what="database")
        if len(self.prefix) + len(name) > MAX_NAME:
            raise InvalidRequestError(
                f"The database name is too long: at most {MAX_NAME - len(self.prefix)} characters here.",
                code="invalid_database_name",
                param="database",
            )
        return self.prefix + name

    def owns(self, stored: str) -> bool:
        return stored.startswith(self.prefix)

    def strip(self, stored: str) -> str:
        """The name the user knows for one of their own databases."""
        return stored[len(self.prefix) :] if self.owns(stored) else stored

    def scrub(self, text: str) -> str:
        """A message from Chroma as the user may read it: their prefix gone, anyone else's hidden."""
        return self._foreign.sub("[hidden]", text.replace(self.prefix, ""))
