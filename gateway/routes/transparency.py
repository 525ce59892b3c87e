"""The transparency log's public routes: a leaf's proof, the latest checkpoint, consistency proofs, the key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import BaseRoute

from gateway.errors import NotFoundError
from gateway.fields import query_int
from gateway.openapi import HASH, INTEGER, STRING, ApiRoute, Operation, Reply, obj
from gateway.transparency.log import TransparencyLog, hash_text, parse_hash_text

MAX_TREE_SIZE = 2**63 - 1  # the log's sizes are BIGINT

PROOF = obj(
    {
        "leaf_index": INTEGER,
        "tree_size": INTEGER,
        "root_hash": HASH,
        "audit_path": {"type": "array", "items": HASH},
        "checkpoint": STRING,
    }
)
VERIFY = Operation(
    "A leaf's inclusion in the latest signed tree, checked by the gateway too (public)",
    {
        200: Reply(
            "The proof and its verdict", {**PROOF, "required": [*PROOF["required"], "hash", "verified"]}
        )
    },
    path={"hash": HASH},
    errors=(400, 404),
)
CHECKPOINT = Operation(
    "The latest signed tree head, a C2SP signed note (public)",
    {200: Reply("The checkpoint", STRING, media_type="text/plain")},
)
TREE_SIZE = {"type": "integer", "minimum": 1}
CONSISTENCY = Operation(
    "An RFC 9162 consistency proof between two tree sizes (public)",
    {
        200: Reply(
            "The proof",
            obj(
                {
                    "first": INTEGER,
                    "second": INTEGER,
                    "first_root_hash": HASH,
                    "second_root_hash": HASH,
                    "consistency_path": {"type": "array", "items": HASH},
                }
            ),
        )
    },
    query={"first": TREE_SIZE, "second": TREE_SIZE},
    required_query=("first", "second"),
    errors=(400,),
)
PUBLIC_KEY = Operation(
    "The log's Ed25519 key, and its signed-note verifier key (public)",
    {
        200: Reply(
            "The key",
            obj(
                {
                    "origin": STRING,
                    "algorithm": STRING,
                    "public_key": STRING,
                    "key_id": STRING,
                    "verifier_key": STRING,
                }
            ),
        )
    },
)


class TransparencyRoutes:
    def __init__(self, log: TransparencyLog) -> None:
        self.log = log

    async def verify_proof(self, request: Request) -> JSONResponse:
        """`GET /verify/proof/{hash}`: the leaf's inclusion in the latest signed tree, checked here too."""
        leaf_hash = parse_hash_text(request.path_params["hash"])
        proof = await self.log.proof_for(leaf_hash)
        if proof is None:
            raise NotFoundError("No leaf has this hash.", code="leaf_not_found")
        return JSONResponse(
            {"hash": hash_text(leaf_hash), "verified": proof.is_verified(), **proof.as_json()}
        )

    async def checkpoint(self, request: Request) -> PlainTextResponse:
        """`GET /v1/transparency/checkpoint`: the latest signed tree head, as a C2SP note."""
        signed = await self.log.checkpoint()
        return PlainTextResponse(signed.text, media_type="text/plain; charset=utf-8")

    async def consistency(self, request: Request) -> JSONResponse:
        """`GET /v1/transparency/consistency?first=M&second=N`."""
        proof = await self.log.consistency(_size(request, "first"), _size(request, "second"))
        return JSONResponse(proof.as_json())

    async def public_key(self, request: Request) -> JSONResponse:
        """`GET /v1/transparency/public-key`."""
        return JSONResponse(self.log.public_key())


def _size(request: Request, name: str) -> int:
    return query_int(request.query_params.get(name), param=name, low=0, high=MAX_TREE_SIZE)


def transparency_routes(log: TransparencyLog) -> list[BaseRoute]:
    """The routes, all public: a proof needs no credential to be checked."""
    routes = TransparencyRoutes(log)
    return [
        ApiRoute("/verify/proof/{hash}", routes.verify_proof, methods=["GET"], operation=VERIFY),
        ApiRoute("/v1/transparency/checkpoint", routes.checkpoint, methods=["GET"], operation=CHECKPOINT),
        ApiRoute("/v1/transparency/consistency", routes.consistency, methods=["GET"], operation=CONSISTENCY),
        ApiRoute("/v1/transparency/public-key", routes.public_key, methods=["GET"], operation=PUBLIC_KEY),
    ]
