"""The dashboard's ASGI app: a JSON API over `Sources` and the static front-end, loopback only by default.

Example:
    >>> app = create_app(Sources.scan(["out/"]))            # doctest: +SKIP
    >>> serve(app, host="127.0.0.1", port=0)                 # doctest: +SKIP
    mechscope dashboard: http://127.0.0.1:43121/
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from mechscope.apps.dashboard.api import (
    ID_PATTERN,
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    Graph,
    HeadsTable,
    Heatmap,
    LatentDetail,
    LatentPage,
    NotFoundError,
    Order,
    SearchResult,
    SortKey,
    SourceList,
    Sources,
)
from mechscope.apps.dashboard.live import (
    AttentionRequest,
    AttentionView,
    Live,
    PromptRequest,
    PromptView,
    SteerRequest,
    SteerView,
)
from mechscope.core.errors import MechscopeError

STATIC = Path(__file__).parent / "static"
MAX_URL_CHARS = 2048
MAX_BODY_BYTES = 64 * 1024
# Everything the page loads comes from this server; inline data is JSON, never script.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"

SourceId = Annotated[str, PathParam(pattern=ID_PATTERN)]


def create_app(sources: Sources, model_name: str | None = None, model: Any = None,
               tuned_lens: Any = None) -> FastAPI:
    """The app serving `sources`; with a loaded `model`, also the live prompt, attention and steering views
    (and the tuned lens table with a `TunedLens`).

    Every route is read-only: the POST routes compute, they write nothing.

    Example:
        >>> create_app(Sources.scan(["."])).title
        'mechscope dashboard'
    """
    app = FastAPI(title="mechscope dashboard", version="1", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def limits(request: Request, call_next: Any) -> Any:
        if len(str(request.url)) > MAX_URL_CHARS:
            return JSONResponse({"detail": f"URL longer than {MAX_URL_CHARS} characters"}, status_code=414)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, err: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(MechscopeError)
    async def bad_request(_: Request, err: MechscopeError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.get("/api/sources", response_model=SourceList)
    def list_sources() -> SourceList:
        return SourceList(sources=sources.infos, model=model_name)

    @app.get("/api/features/{db}/latents", response_model=LatentPage)
    def latent_page(db: SourceId, sort: SortKey = "latent", order: Order = "asc",
                    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
                    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50) -> LatentPage:
        return sources.feature_source(db).page(db, sort, order, offset, limit)

    @app.get("/api/features/{db}/latents/{latent}", response_model=LatentDetail)
    def latent_detail(db: SourceId, latent: Annotated[int, PathParam(ge=0, le=2**31)]) -> LatentDetail:
        return sources.feature_source(db).detail(db, latent)

    @app.get("/api/features/{db}/search", response_model=SearchResult)
    def search(db: SourceId, q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
               limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20) -> SearchResult:
        return sources.feature_source(db).search(db, q, limit)

    for kind, response, read in (("patch", Heatmap, sources.heatmap), ("heads", HeadsTable, sources.heads),
                                 ("graph", Graph, sources.graph)):
        app.add_api_route(f"/api/{kind}/{{doc}}", _document_route(read), methods=["GET"], response_model=response,
                          name=kind)

    if model is not None:
        _add_live_routes(app, Live(model, sources, tuned_lens))

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _document_route(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """A GET handler answering `read(doc)` for a validated source id."""
    def route(doc: SourceId) -> Any:
        return read(doc)
    return route


def _post_route(compute: Callable[[Any], Any], request: type) -> Callable[[Any], Any]:
    """A POST handler whose JSON body is validated as `request`, answering `compute(body)`."""
    def route(req: Any) -> Any:
        return compute(req)
    route.__annotations__ = {"req": request, "return": Any}
    return route


def _add_live_routes(app: FastAPI, live: Live) -> None:
    for name, request, response, compute in (("prompt", PromptRequest, PromptView, live.prompt),
                                             ("attention", AttentionRequest, AttentionView, live.attention),
                                             ("steer", SteerRequest, SteerView, live.steer)):
        app.add_api_route(f"/api/model/{name}", _post_route(compute, request), methods=["POST"],
                          response_model=response, name=name)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 0, on_start: Any = None) -> None:
    """Run `app` with uvicorn until interrupted; `on_start(url)` is called once the socket is bound.

    Example:
        >>> serve(create_app(Sources.scan(["out/"])), port=8000, on_start=print)   # doctest: +SKIP
        http://127.0.0.1:8000
    """
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise MechscopeError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    sock.listen(128)
    bound = sock.getsockname()
    if on_start is not None:
        on_start(f"http://{_url_host(bound[0])}:{bound[1]}/")
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
