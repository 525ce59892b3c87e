"""What the gateway asks Chroma on its own account: whether a database owns a collection, and creating a
user's default database on first use.

Chroma ignores the database in the path of every route that names a collection by id, so the gateway proves
ownership with the one route that checks it (`.../databases/{db}/collections/by-id/{id}`) before forwarding.
A collection never changes database and ids are never reused, so a "yes" is cached; a "no" is not. The lookups
go through Chroma's upstream client, so its failures are the proxy's: 502 `upstream_unavailable` when Chroma cannot
be reached, 504 `upstream_timeout` when it does not answer in time, 503 `upstream_busy` when its pool is full.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from urllib.parse import quote

from gateway.chroma.names import DEFAULT_TENANT
from gateway.errors import NotFoundError, UpstreamError
from gateway.upstream_client import JsonAnswer
from gateway.upstreams import Upstream, UpstreamClients

MAX_CACHED = 100_000


class ChromaLookups:
    """Ownership checks and default-database creation, with their caches (per process)."""

    def __init__(self, upstream: Upstream, clients: UpstreamClients) -> None:
        self.upstream = upstream
        self.clients = clients
        self._owned: OrderedDict[tuple[str, uuid.UUID], None] = OrderedDict()
        self._created: set[str] = set()

    async def check_owner(self, database: str, collection_id: uuid.UUID) -> None:
        """Return when Chroma database `database` holds the collection; 404 otherwise, as if it did not exist.
        Raises the upstream client's errors when Chroma gives no answer."""
        key = (database, collection_id)
        if key in self._owned:
            self._owned.move_to_end(key)
            return
        response = await self._request("GET", f"{_database_path(database)}/collections/by-id/{collection_id}")
        if response.status == 404:
            raise NotFoundError(f"Collection [{collection_id}] does not exist.", code="collection_not_found")
        if response.status != 200:
            raise UpstreamError("Chroma could not check the collection.")
        self._owned[key] = None
        if len(self._owned) > MAX_CACHED:
            self._owned.popitem(last=False)

    async def ensure_database(self, database: str) -> None:
        """Create `database` unless this process has seen it exist (the official client needs its default).
        Raises the upstream client's errors when Chroma gives no answer."""
        if database in self._created:
            return
        response = await self._request("GET", _database_path(database))
        if response.status == 404:
            response = await self._request(
                "POST",
                f"/api/v2/tenants/{DEFAULT_TENANT}/databases",
                json={"name": database},
            )
            # 409: another request created it first, which is as good.
            if response.status not in (200, 201, 409):
                raise UpstreamError("Chroma could not create the default database.")
        elif response.status != 200:
            raise UpstreamError("Chroma could not read the default database.")
        self._created.add(database)

    def forget_database(self, database: str) -> None:
        """The database was deleted: the next use of it must create it again."""
        self._created.discard(database)

    async def _request(self, method: str, path: str, *, json: object = None) -> JsonAnswer:
        return await self.clients[self.upstream.name].fetch_json(method, path, json=json)


def _database_path(database: str) -> str:
    return f"/api/v2/tenants/{DEFAULT_TENANT}/databases/{quote(database, safe='')}"
