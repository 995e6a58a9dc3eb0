"""The HTTP API: FastAPI on uvicorn. The schema is at /openapi.json, readable at /docs.

    GET /v1/recommendations/{user_id}?n=&arm=&query=   bearer token required
    GET /healthz  (also /health)                       liveness + what is loaded, no token
    GET /metrics                                       Prometheus exposition, no token (no user data)

Errors are JSON `{"error": ...}` with 400 (bad input), 401 (missing/wrong token), 404 (route) —
FastAPI's own 422 and `{"detail": ...}` are mapped onto these, which clients already handle.
"""
# No `from __future__ import annotations`: FastAPI reads the route signatures' Annotated
# metadata at definition time, and the token dependency is a local of create_app.
import hmac
import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api_metrics import ApiMetrics
from serving.service import MAX_N, BadRequest

if TYPE_CHECKING:
    from serving.service import RecommendationService

PREFIX = "/v1/recommendations/"
ROUTE = PREFIX + "{user_id}"
TOKEN_ERROR = "missing or wrong bearer token: send 'Authorization: Bearer <token>'"


class Item(BaseModel):
    item_id: int
    score: float
    outcome: str | None
    source: str  # precomputed | regenerated | popularity


class Recommendations(BaseModel):
    user_id: int
    arm: str | None
    arm_source: str  # requested (named by the client) | assigned (by the traffic split)
    n: int
    fallback: str | None
    sources: list[str]
    candidates_ds: str | None
    sequences_ds: str | None
    fresh_events: int
    notes: list[str]
    items: list[Item]
    request_id: str
    took_ms: float


class Health(BaseModel):
    status: str
    candidates_ds: str | None
    sequences_ds: str | None
    arms: list[str]
    regeneration: bool
    model_version: str | None
    index_version: str | None
    candidates_model_version: str | None


class ApiError(BaseModel):
    error: str


def served_version(folder: str) -> str | None:
    """The version name of a snapshot's model/index folder ("None" when nothing is published)."""
    return None if folder in ("None", "") else folder.rstrip("/").rsplit("/", 1)[-1]


def health(service: "RecommendationService") -> dict:
    snap = service.snapshot  # one snapshot: the versions below belong together
    return {"status": "ok", "candidates_ds": snap.candidates.ds, "sequences_ds": snap.sequences.ds,
            "arms": sorted(snap.candidates.arms), "regeneration": snap.regenerator is not None,
            # what ops (and `pinrec rehearse`) check belongs to one ds
            "model_version": served_version(snap.key[2]),
            "index_version": served_version(snap.key[3]),
            "candidates_model_version": snap.candidates.model_version}


def missing_user_id_message(got: str) -> str:
    """The 400 message for an empty or whitespace-only user id (`GET /v1/recommendations/`)."""
    return f"user_id is missing (got {got!r}): send GET {PREFIX}<user_id>, a non-negative integer"


def bad_request_message(error: dict) -> str:
    """The 400 message for one pydantic validation error of the recommendations route, in the
    words the API has always used (name the field, what it must be, what came)."""
    field, got, kind = error["loc"][-1], error.get("input"), error["type"]
    if field == "user_id":
        if isinstance(got, str) and not got.strip():
            return missing_user_id_message(got)
        if kind.startswith(("greater_than", "less_than")):
            return f"user_id must be non-negative, got {got}"
        return f"user_id must be an integer, got {got!r}"
    if field == "n":
        if kind.startswith(("greater_than", "less_than")):
            return f"n must be between 1 and {MAX_N}, got {got}"
        return f"n must be an integer between 1 and {MAX_N}, got {got!r}"
    return f"{field}: {error['msg']}"


def json_response(obj, status: int = 200, headers: dict | None = None) -> Response:
    """Compact JSON, encoded once: the body is already plain dicts and lists, so FastAPI's
    jsonable_encoder pass and response-model re-validation would only add latency."""
    return Response(json.dumps(obj, separators=(",", ":")).encode(), status,
                    headers=headers, media_type="application/json")


class ObserveRequests:
    """ASGI middleware: count and time every request by its route *template* (the matched
    FastAPI route; `unmatched` for 404s), never by the raw path a client sent."""

    def __init__(self, app, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = scope.get("route")
            self.metrics.observe(route.path if route is not None else "unmatched", status,
                                 time.perf_counter() - t0)


def create_app(service: "RecommendationService", token: str,
               metrics: ApiMetrics | None = None) -> FastAPI:
    if not token:
        raise ValueError("an API token is required: set PINREC_API_TOKEN (or --token-file)")
    metrics = metrics or ApiMetrics(service)
    expected = token.encode()
    app = FastAPI(title="PinRec recommendations", version="1",
                  description="Outcome-conditioned recommendations: precomputed candidates "
                              "blended with regeneration from the user's fresh events.")
    app.add_middleware(ObserveRequests, metrics=metrics)
    bearer = HTTPBearer(auto_error=False, description="the API token (PINREC_API_TOKEN)")

    async def require_token(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        if cred is None or not hmac.compare_digest(cred.credentials.encode(), expected):
            raise HTTPException(401, TOKEN_ERROR, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return json_response({"error": bad_request_message(exc.errors()[0])}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = (f"no route {request.url.path}; see GET {ROUTE}" if exc.status_code == 404
                   else str(exc.detail))
        return json_response({"error": message}, exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    errors = {400: {"model": ApiError}, 401: {"model": ApiError}}

    # A plain `def`: FastAPI runs it on its thread pool, so a request waiting for regeneration
    # (or RocksDB) never blocks the event loop that accepts the others.
    @app.get(ROUTE, response_model=Recommendations, responses=errors,
             dependencies=[Depends(require_token)])
    def recommend(user_id: Annotated[int, Path(ge=0, description="the user")],
                  n: Annotated[int, Query(ge=1, le=MAX_N, description="items to return")] = 50,
                  arm: Annotated[str | None, Query(description="experiment arm; default: the "
                                                   "user's assigned arm")] = None,
                  query: Annotated[str | None, Query(description="a search query to condition "
                                                     "on (regenerates)")] = None):
        try:
            body = service.recommend(user_id, n=n, arm=arm or None, query=query or None)
        except BadRequest as e:
            return json_response({"error": str(e)}, 400)
        return json_response(body)

    # An empty user id matches no `{user_id}` route; without these it would be a 404 "no route"
    # (or, without the slash, a redirect to one), yet the route is right and the input is wrong:
    # a 400 like any other bad user id, after the token check like them.
    @app.get(PREFIX, include_in_schema=False, dependencies=[Depends(require_token)])
    @app.get(PREFIX.rstrip("/"), include_in_schema=False, dependencies=[Depends(require_token)])
    def recommend_without_user():
        return json_response({"error": missing_user_id_message("")}, 400)

    @app.get("/healthz", response_model=Health)
    @app.get("/health", response_model=Health, include_in_schema=False)
    async def healthz():
        return json_response(health(service))

    @app.get("/metrics", response_class=Response, include_in_schema=False)
    def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    return app


class ApiServer:
    """uvicorn on a socket bound here, with `http.server`'s surface (`server_port`,
    `serve_forever`, `shutdown`, `server_close`): the port is known (port=0 picks a free one)
    before serving starts, and callers (pinrec serve, tests) start and stop it like one."""

    def __init__(self, app: FastAPI, host: str, port: int):
        import uvicorn

        self.socket = socket.create_server((host, port), backlog=2048)
        self.server_port = self.socket.getsockname()[1]
        # lifespan off: the app holds no startup state; access log off: the served log is the
        # record of responses, and a line per request would cost more than the request.
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    lifespan="off", timeout_keep_alive=60,
                                                    timeout_graceful_shutdown=5))
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self.server.should_exit = True
        self._stopped.wait(30)

    def server_close(self) -> None:
        self.socket.close()


def make_server(service: "RecommendationService", token: str, host: str = "127.0.0.1",
                port: int = 8000) -> ApiServer:
    return ApiServer(create_app(service, token), host, port)
