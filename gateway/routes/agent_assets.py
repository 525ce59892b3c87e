"""An agent's assets: its vault of BYOK keys, its API keys, its files and its quota. Thin endpoints only.

Each route loads the agent through `gateway.agents.access.agent_for_request`, which answers 404 for another
user's agent and 403 for an agent key where API.md does not allow one (vault, API keys, file deletion).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from gateway.agents import files, uploads, vault
from gateway.agents.access import agent_for_request, principal_of
from gateway.agents.agent_keys import (
    AGENT_KEY_ID_PREFIX,
    AGENT_KEY_SCOPES,
    create_agent_key,
    list_agent_keys,
    revoke_agent_key,
)
from gateway.agents.quotas import Quotas, quota_report
from gateway.agents.storage import ObjectMissingError, Storage
from gateway.auth.authenticator import Authenticator
from gateway.auth.principals import AGENT_KEY
from gateway.auth.revocations import TOKEN, Revocations
from gateway.auth.tokens import TokenCodec
from gateway.db.asset_models import AgentApiKey, AgentFile, AgentVaultKey
from gateway.db.base import iso
from gateway.db.engine import Database
from gateway.errors import (
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnsupportedMediaTypeError,
)
from gateway.fields import is_id
from gateway.middleware.auth import AuthMiddleware
from gateway.openapi import (
    EMPTY,
    INTEGER,
    STRING,
    TIME,
    USER,
    ApiRoute,
    Operation,
    Reply,
    data_of,
    nullable,
    obj,
)
from gateway.routes.bodies import json_object, optional_string

FILES_SCOPE = "files"
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # what a body may carry beyond its file: boundaries, part headers
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, no-store",
}


def vault_json(record: AgentVaultKey) -> dict[str, object]:
    return {"provider": record.provider, "prefix": record.prefix, "created_at": iso(record.created_at)}


def key_json(record: AgentApiKey) -> dict[str, object]:
    return {
        "id": record.id,
        "agent_id": record.agent_id,
        "name": record.name,
        "prefix": record.prefix,
        "scopes": record.scopes,
        "created_at": iso(record.created_at),
        "last_used_at": iso(record.last_used_at),
        "revoked_at": iso(record.revoked_at),
    }


def file_json(record: AgentFile) -> dict[str, object]:
    return {
        "id": record.id,
        "agent_id": record.agent_id,
        "filename": record.filename,
        "content_type": record.content_type,
        "size": record.size,
        "sha256": record.sha256,
        "created_at": iso(record.created_at),
    }


class AgentAssetRoutes:
    def __init__(
        self,
        database: Database,
        *,
        vault: vault.Vault,
        codec: TokenCodec,
        revocations: Revocations,
        storage: Storage,
        quotas: Quotas,
        max_upload_bytes: int,
        providers: Collection[str],
    ) -> None:
        self.database = database
        self.vault = vault
        self.codec = codec
        self.revocations = revocations
        self.storage = storage
        self.quotas = quotas
        self.max_upload_bytes = max_upload_bytes
        self.providers = providers

    # The vault (no agent keys).

    async def store_vault_key(self, request: Request) -> JSONResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=False)
        body = await json_object(request, require_json_type=True)
        provider = self._provider(body.get("provider"))
        api_key = body.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip() or len(api_key) > vault.MAX_API_KEY_CHARS:
            raise InvalidRequestError("api_key must be a non-empty string.", param="api_key")
        if not api_key.isprintable() or any(ch.isspace() for ch in api_key):
            raise InvalidRequestError("api_key holds whitespace or control characters.", param="api_key")
        async with self.database.session() as session, session.begin():
            record = await vault.store_key(
                session, self.vault, agent_id=agent.id, provider=provider, api_key=api_key
            )
        return JSONResponse(vault_json(record), status_code=201)

    async def list_vault_keys(self, request: Request) -> JSONResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=False)
        async with self.database.session() as session:
            records = await vault.list_keys(session, agent.id)
        return JSONResponse({"data": [vault_json(record) for record in records]})

    async def delete_vault_key(self, request: Request) -> Response:
        agent = await agent_for_request(self.database, request, agent_key_ok=False)
        provider = request.query_params.get("provider")
        if not provider:
            raise InvalidRequestError("Name the key to delete: ?provider=...", param="provider")
        if not vault.is_valid_provider(provider):
            raise InvalidRequestError("provider must be a provider name such as 'openai'.", param="provider")
        async with self.database.session() as session, session.begin():
            await vault.delete_key(session, agent_id=agent.id, provider=provider)
        return Response(status_code=204)

    def _provider(self, value: object) -> str:
        if not isinstance(value, str) or not vault.is_valid_provider(value):
            raise InvalidRequestError("provider must be a provider name such as 'openai'.", param="provider")
        if value not in self.providers:
            raise InvalidRequestError(
                f"Unknown provider {value!r}; known: {sorted(self.providers)}.", param="provider"
            )
        return value

    # API keys (no agent keys).

    async def create_key(self, request: Request) -> JSONResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=False)
        body = await _optional_json_object(request)
        name = optional_string(body, "name", column=AgentApiKey.name) or ""
        scopes = _scopes(body.get("scopes"))
        async with self.database.session() as session, session.begin():
            record, raw = await create_agent_key(
                session, self.codec, agent_id=agent.id, name=name, scopes=scopes
            )
        return JSONResponse({**key_json(record), "raw_key": raw}, status_code=201)

    async def list_keys(self, request: Request) -> JSONResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=False)
        async with self.database.session() as session:
            records = await list_agent_keys(session, agent.id)
        return JSONResponse({"data": [key_json(record) for record in records]})

    async def revoke_key(self, request: Request) -> Response:
        agent = await agent_for_request(self.database, request, agent_key_ok=False)
        key_id = request.path_params["key_id"]
        if not is_id(key_id, AGENT_KEY_ID_PREFIX):
            raise NotFoundError("No such API key.")
        async with self.database.session() as session:
            async with session.begin():
                record = await revoke_agent_key(session, agent_id=agent.id, key_id=key_id)
                if record is None:
                    raise NotFoundError("No such API key.")
                target = await self.revocations.announce(session, TOKEN, record.id)
            self.revocations.apply(target)
        return Response(status_code=204)

    # Files (agent keys with the files scope, except deletion).

    async def upload_file(self, request: Request) -> JSONResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=True)
        _require_files_scope(request)
        tier = self.quotas.tier_of(agent)
        declared = request.headers.get("content-length")
        if (
            declared
            and declared.isdigit()
            and int(declared) > self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        ):
            raise PayloadTooLargeError(
                f"The file is over the {self.max_upload_bytes}-byte limit per file.", code="file_too_large"
            )
        try:
            record = await files.accept_upload(
                self.database,
                self.storage,
                request.stream(),
                request.headers.get("content-type"),
                agent_id=agent.id,
                tier=tier,
                max_bytes=self.max_upload_bytes,
            )
        except uploads.NotMultipartError as exc:
            raise UnsupportedMediaTypeError(str(exc)) from None
        except uploads.MalformedUploadError as exc:
            raise InvalidRequestError(str(exc), param="file") from None
        except uploads.FileTooLargeError as exc:
            raise PayloadTooLargeError(str(exc), code="file_too_large") from None
        except uploads.StorageQuotaError as exc:
            raise _quota_error(exc) from None
        return JSONResponse(file_json(record), status_code=201)

    async def list_files(self, request: Request) -> JSONResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=True)
        _require_files_scope(request)
        async with self.database.session() as session:
            records = await files.list_files(session, agent.id)
        return JSONResponse({"data": [file_json(record) for record in records]})

    async def download_file(self, request: Request) -> StreamingResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=True)
        _require_files_scope(request)
        async with self.database.session() as session:
            record = await files.find_file(session, agent_id=agent.id, file_id=_file_id(request))
        if record is None:
            raise NotFoundError("No such file.")
        try:
            chunks = await self.storage.read(record.storage_key)
        except ObjectMissingError:
            raise NotFoundError("The file's content is gone.") from None
        headers = {
            **DOWNLOAD_HEADERS,
            "Content-Disposition": files.attachment_disposition(record.filename),
            "Content-Length": str(record.size),
        }
        return StreamingResponse(chunks, media_type=record.content_type, headers=headers)

    async def delete_file(self, request: Request) -> Response:
        agent = await agent_for_request(self.database, request, agent_key_ok=False)
        deleted = await files.delete_file(
            self.database, self.storage, agent_id=agent.id, file_id=_file_id(request)
        )
        if not deleted:
            raise NotFoundError("No such file.")
        return Response(status_code=204)

    # Quota (agent keys too).

    async def quota(self, request: Request) -> JSONResponse:
        agent = await agent_for_request(self.database, request, agent_key_ok=True)
        async with self.database.session() as session:
            report = await quota_report(session, agent, self.quotas)
        return JSONResponse(report)

    def routes(self, authenticator: Authenticator) -> list[BaseRoute]:
        """The routes, behind auth that lets agent keys through to the per-route agent check."""
        auth = [Middleware(AuthMiddleware, authenticator=authenticator, agent_keys=True)]
        base = "/v1/agents/{agent_id}"
        return [
            ApiRoute(
                f"{base}/vault",
                self.store_vault_key,
                methods=["POST"],
                middleware=auth,
                operation=STORE_VAULT_KEY,
            ),
            ApiRoute(
                f"{base}/vault",
                self.list_vault_keys,
                methods=["GET"],
                middleware=auth,
                operation=LIST_VAULT_KEYS,
            ),
            ApiRoute(
                f"{base}/vault",
                self.delete_vault_key,
                methods=["DELETE"],
                middleware=auth,
                operation=DELETE_VAULT_KEY,
            ),
            ApiRoute(
                f"{base}/api-keys", self.create_key, methods=["POST"], middleware=auth, operation=CREATE_KEY
            ),
            ApiRoute(
                f"{base}/api-keys", self.list_keys, methods=["GET"], middleware=auth, operation=LIST_KEYS
            ),
            ApiRoute(
                f"{base}/api-keys/{{key_id}}",
                self.revoke_key,
                methods=["DELETE"],
                middleware=auth,
                operation=REVOKE_KEY,
            ),
            ApiRoute(
                f"{base}/files", self.upload_file, methods=["POST"], middleware=auth, operation=UPLOAD_FILE
            ),
            ApiRoute(
                f"{base}/files", self.list_files, methods=["GET"], middleware=auth, operation=LIST_FILES
            ),
            ApiRoute(
                f"{base}/files/{{file_id}}",
                self.download_file,
                methods=["GET"],
                middleware=auth,
                operation=DOWNLOAD_FILE,
            ),
            ApiRoute(
                f"{base}/files/{{file_id}}",
                self.delete_file,
                methods=["DELETE"],
                middleware=auth,
                operation=DELETE_FILE,
            ),
            ApiRoute(f"{base}/quota", self.quota, methods=["GET"], middleware=auth, operation=QUOTA),
        ]


VAULT_KEY = obj({"provider": STRING, "prefix": STRING, "created_at": TIME})
AGENT_KEY_RECORD = obj(
    {
        "id": STRING,
        "agent_id": STRING,
        "name": STRING,
        "prefix": STRING,
        "scopes": {"type": "array", "items": STRING},
        "created_at": TIME,
        "last_used_at": nullable(TIME),
        "revoked_at": nullable(TIME),
    }
)
FILE_RECORD = obj(
    {
        "id": STRING,
        "agent_id": STRING,
        "filename": STRING,
        "content_type": STRING,
        "size": INTEGER,
        "sha256": STRING,
        "created_at": TIME,
    }
)
ON_AGENT = (401, 403, 404)  # 403: an agent key where it may not go; 404: no such agent, or another user's
STORE_VAULT_KEY = Operation(
    "Store (or replace) the agent's key for a provider, encrypted at rest",
    {201: Reply("The key's prefix, never the key", VAULT_KEY)},
    body=obj({"provider": STRING, "api_key": {"type": "string", "maxLength": vault.MAX_API_KEY_CHARS}}),
    errors=(400, *ON_AGENT, 413, 415),
    security=USER,
)
LIST_VAULT_KEYS = Operation(
    "The agent's stored keys, as prefixes",
    {200: Reply("The keys", data_of(VAULT_KEY))},
    errors=ON_AGENT,
    security=USER,
)
DELETE_VAULT_KEY = Operation(
    "Delete the agent's key for a provider",
    {204: EMPTY},
    query={"provider": {"type": "string", "pattern": f"^{vault.PROVIDER_NAME.pattern}$"}},
    required_query=("provider",),
    errors=(400, *ON_AGENT),
    security=USER,
)
CREATE_KEY = Operation(
    "A new agent key: its secret shown this once",
    {
        201: Reply(
            "The key and its `raw_key`",
            {**AGENT_KEY_RECORD, "required": [*AGENT_KEY_RECORD["required"], "raw_key"]},
        )
    },
    body=obj(
        {},
        {
            "name": {"type": "string", "maxLength": 200},
            "scopes": {"type": "array", "items": {"type": "string", "enum": sorted(AGENT_KEY_SCOPES)}},
        },
    ),
    body_required=False,
    errors=(400, *ON_AGENT, 413),
    security=USER,
)
LIST_KEYS = Operation(
    "The agent's keys, without secrets",
    {200: Reply("The keys", data_of(AGENT_KEY_RECORD))},
    errors=ON_AGENT,
    security=USER,
)
REVOKE_KEY = Operation(
    "Revoke an agent key, everywhere within a second", {204: EMPTY}, errors=ON_AGENT, security=USER
)
UPLOAD_FILE = Operation(
    "Upload a file (multipart `file` part), streamed to storage",
    {201: Reply("The file's record", FILE_RECORD)},
    body=obj({"file": {"type": "string", "format": "binary"}}),
    body_media_type="multipart/form-data",
    errors=(400, *ON_AGENT, 413, 415),
    security=USER,
)
LIST_FILES = Operation(
    "The agent's files", {200: Reply("The files", data_of(FILE_RECORD))}, errors=ON_AGENT, security=USER
)
DOWNLOAD_FILE = Operation(
    "A file's content, as an attachment",
    {200: Reply("The content, as uploaded", {}, media_type="*/*")},
    errors=ON_AGENT,
    security=USER,
)
DELETE_FILE = Operation("Delete a file", {204: EMPTY}, errors=ON_AGENT, security=USER)
QUOTA = Operation(
    "The agent's tier, period, limits, use and what remains",
    {
        200: Reply(
            "The quota",
            obj(
                {
                    "tier": STRING,
                    "period": obj({"start": TIME, "end": TIME}),
                    "limits": {"type": "object"},
                    "used": {"type": "object"},
                    "remaining": {"type": "object"},
                }
            ),
        )
    },
    errors=ON_AGENT,
    security=USER,
)


def _require_files_scope(request: Request) -> None:
    principal = principal_of(request)
    if principal.kind == AGENT_KEY and not principal.may(FILES_SCOPE):
        raise PermissionDeniedError(
            f"This agent key lacks the {FILES_SCOPE!r} scope.", code="insufficient_scope"
        )


def _file_id(request: Request) -> str:
    """The route's file id; 404, as for an unknown one, when it is not of a file id's form."""
    file_id: str = request.path_params["file_id"]
    if not is_id(file_id, files.FILE_ID_PREFIX):
        raise NotFoundError("No such file.")
    return file_id


def _quota_error(exc: uploads.StorageQuotaError) -> PayloadTooLargeError:
    return PayloadTooLargeError(str(exc), code="storage_quota_exceeded")


async def _optional_json_object(request: Request) -> dict[str, Any]:
    """The JSON object body, or {} for an empty body (every field of the request is optional)."""
    if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return {}
    return await json_object(request)


def _scopes(value: object) -> list[str]:
    if value is None:
        return sorted(AGENT_KEY_SCOPES)
    if not isinstance(value, list) or not all(isinstance(scope, str) for scope in value):
        raise InvalidRequestError("scopes must be an array of strings.", param="scopes")
    unknown = sorted(set(value) - AGENT_KEY_SCOPES)
    if unknown:
        raise InvalidRequestError(
            f"Unknown scopes {unknown}; known: {sorted(AGENT_KEY_SCOPES)}.",
            param="scopes",
            code="invalid_scope",
        )
    return sorted(set(value))
