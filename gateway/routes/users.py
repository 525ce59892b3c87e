"""`GET /v1/users`: every user of the gateway, for an admin's session (the dashboard's picker that narrows the
usage figures to one user)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth.users import list_users, user_json
from gateway.db.engine import Database
from gateway.errors import PermissionDeniedError
from gateway.openapi import USER, Operation, Reply, data_of
from gateway.routes.sessions import USER_RECORD
from gateway.routes.tokens import caller


class UserRoutes:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def list(self, request: Request) -> JSONResponse:
        if not caller(request).is_admin:
            raise PermissionDeniedError("Only an admin may list the users.", code="admin_only")
        async with self.database.session() as session:
            users = await list_users(session)
        return JSONResponse({"data": [user_json(user) for user in users]})


LIST = Operation(
    "Every user, oldest first (an admin's session or platform JWT only)",
    {200: Reply("The users", data_of(USER_RECORD))},
    errors=(401, 403),
    security=USER,
)
