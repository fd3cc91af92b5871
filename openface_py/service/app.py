"""The HTTP service (``openface-py serve``): FastAPI over a face database.

JSON API under ``/v1`` (detect, embed, verify, identify, people, enroll, delete, health), the
OpenAPI docs at ``/docs``, a web page at ``/``. Photos come as multipart uploads or base64 in
JSON. Design points:

- Models are loaded once per process, at start-up (``Service``), never at import.
- Inference runs off the event loop in a pool of ``inference_threads`` threads, each with its
  own pipeline. Admission is bounded: at most ``max_queue`` requests are running or waiting;
  one more is answered 503 with ``Retry-After`` at once (no unbounded backlog).
- Requests are bounded (``Content-Length`` required, at most ``max_upload_bytes``; photos at
  most ``max_pixels``); bad photos get 4xx with the reason; any unexpected error is logged
  here and answered 500 without details: clients never see a stack trace.
- Writes (enroll, delete) need the API key (``X-API-Key`` or ``Authorization: Bearer``,
  compared in constant time); without a configured key they are refused. ``protect_all``
  puts every endpoint but the page and ``/v1/health`` behind the key. Names are validated and
  nothing a client sends becomes a file path.
- Every write is one SQLite transaction, acknowledged only after it committed; the FAISS index
  is saved every ``index_save_s`` seconds when changed and at shutdown, and a killed server's
  index is caught up from the database on the next start (``FaceDatabase.sync_index``).
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Callable, Optional

import numpy as np

from openface_py.errors import ImageLoadError, OpenFacePyError, UsageError
from openface_py.io import load_image
from openface_py.recognize.facedb import FaceDatabase, photo_faces, valid_name

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENFACE_PY_API_KEY"
#: photos (files or base64 strings) accepted in one request
MAX_PHOTOS = 64


@dataclass
class ServiceSettings:
    """How ``serve`` runs (also passed to worker processes as JSON)."""

    db: str
    api_key: Optional[str] = None
    protect_all: bool = False
    detector: str = "hog"
    upsample: int = 1
    max_side: Optional[int] = None
    detector_options: Optional[dict] = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    inference_threads: int = 2
    max_queue: int = 32
    index_save_s: float = 30.0
    max_top_k: int = 20

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class HttpError(Exception):
    """An answer with a status, a reason and optional headers (turned into JSON by the app)."""

    def __init__(self, status: int, detail: str, headers: Optional[dict] = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class Service:
    """What one server process holds: the database, the pipelines and the admission counter."""

    def __init__(self, settings: ServiceSettings) -> None:
        import faiss

        from openface_py.faces.detect import make_detector
        from openface_py.nets.embed import load_embedder
        from openface_py.pipeline import FacePipeline

        # one probe per request: FAISS's OpenMP threads would only spin against the inference threads
        faiss.omp_set_num_threads(1)
        self.settings = settings
        self.db = FaceDatabase.open(settings.db)
        self.db_lock = threading.Lock()
        self.pipelines: queue.Queue = queue.Queue()
        n = max(1, int(settings.inference_threads))
        for _ in range(n):
            emb = load_embedder(self.db.model, threads=1)
            if emb.identity != self.db.identity:
                raise OpenFacePyError(
                    f"{self.db.model} now gives {emb.identity}; {settings.db} holds {self.db.identity}"
                )
            det = make_detector(
                settings.detector,
                upsample=settings.upsample,
                max_side=settings.max_side,
                **(settings.detector_options or {}),
            )
            self.pipelines.put(FacePipeline(det, embedder=emb))
        self.executor = ThreadPoolExecutor(n, thread_name_prefix="inference")
        self.pending = 0
        self.pending_lock = threading.Lock()
        self.dirty = False
        with self.db_lock:
            self.db.sync_index()
            self.db.save_index()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        with self.db_lock:
            self.save_index()
            self.db.close()

    def save_index(self) -> None:
        if self.dirty:
            self.db.sync_index()
            self.db.save_index()
            self.dirty = False

    @asynccontextmanager
    async def slot(self):
        """Admission: at most ``max_queue`` requests past this point (reading their bodies included);
        one more is answered 503 with ``Retry-After`` before anything of it is read."""
        with self.pending_lock:
            if self.pending >= self.settings.max_queue:
                raise HttpError(503, "server busy: too many requests in progress; retry shortly", {"Retry-After": "1"})
            self.pending += 1
        try:
            yield
        finally:
            with self.pending_lock:
                self.pending -= 1

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """Run ``fn(pipeline, *args)`` in the inference pool (off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._with_pipeline, fn, args)

    def _with_pipeline(self, fn, args):
        pipe = self.pipelines.get()
        try:
            return fn(pipe, *args)
        finally:
            self.pipelines.put(pipe)

    # ------------------------------------------------------------ work done in the pool
    def decode(self, data: bytes, what: str = "photo") -> np.ndarray:
        try:
            return load_image(data, max_pixels=self.settings.max_pixels)
        except ImageLoadError as exc:
            raise HttpError(422, f"{what}: {exc.reason}") from None

    def faces(self, pipe, data: bytes, multi: bool = True, what: str = "photo"):
        rgb = self.decode(data, what)
        return rgb, pipe.process(rgb, multi=multi)

    def identify(self, pipe, data: bytes, top_k: int) -> dict:
        _, faces = self.faces(pipe, data)
        with self.db_lock:
            threshold = self.db.threshold
            if threshold is None:
                raise HttpError(409, "the database has no same-person threshold yet (see `openface-py db threshold`)")
            answers = self.db.identify(np.stack([f.embedding for f in faces]), top_k) if faces else []
        return {
            "threshold": threshold,
            "faces": [{"box": f.box.as_list(), **a.to_json()} for f, a in zip(faces, answers)],
        }

    def verify(self, pipe, a: bytes, b: bytes) -> dict:
        reps = []
        for data, what in ((a, "photo1"), (b, "photo2")):
            _, faces = self.faces(pipe, data, multi=False, what=what)
            if not faces:
                raise HttpError(422, f"{what}: no face found")
            reps.append(faces[0].embedding)
        d = float(np.sum((reps[0].astype(np.float64) - reps[1]) ** 2))
        with self.db_lock:
            threshold = self.db.threshold
            cal = json.loads(self.db.meta("calibration"))
        out = {"distance": round(d, 6), "threshold": threshold, "same": None if threshold is None else d <= threshold}
        p_same = None if cal is None else float(1.0 / (1.0 + np.exp(-np.clip(cal["a"] * -d + cal["b"], -500, 500))))
        out["p_same"] = None if p_same is None else round(p_same, 4)
        return out

    def enroll(self, pipe, name: str, photos: list[bytes]) -> dict:
        results, added = [], 0
        for k, data in enumerate(photos):
            try:
                rgb = load_image(data, max_pixels=self.settings.max_pixels)
            except ImageLoadError as exc:
                results.append({"index": k, "error": exc.reason})
                continue
            faces = photo_faces(pipe, rgb)
            if not faces:
                results.append({"index": k, "error": "no face found"})
                continue
            with self.db_lock:
                res = self.db.enroll(name, hashlib.sha256(data).hexdigest(), faces, pipe.embedder.identity)
                self.dirty = True
            added += res.added_faces
            results.append({"index": k, "status": "duplicate" if res.duplicate else "enrolled"})
        return {"name": name, "added_faces": added, "photos": results}


# ---------------------------------------------------------------- request parsing


async def read_body(request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is None:
        raise HttpError(411, "Content-Length required")
    try:
        n = int(length)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if n > limit:
        raise HttpError(413, f"request of {n} bytes is over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpError(413, f"request over the limit of {limit} bytes")
    return bytes(body)


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise HttpError(400, f"{field}: expected a base64 string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{field}: not valid base64") from None


async def photos_from(request, limit: int, fields: tuple[str, ...], many: bool = False) -> dict[str, list[bytes]]:
    """The photos of a request, by field: multipart files or base64 strings in a JSON object."""
    from starlette.datastructures import UploadFile

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    out: dict[str, list[bytes]] = {f: [] for f in fields}
    if ctype == "multipart/form-data":
        from starlette.requests import Request

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, receive).form(
                max_files=MAX_PHOTOS, max_fields=MAX_PHOTOS, max_part_size=limit
            )
        except Exception as exc:  # the multipart parser's own errors: malformed input
            raise HttpError(400, f"malformed multipart body: {getattr(exc, 'detail', exc)}") from None
        for f in fields:
            for item in form.getlist(f):
                if not isinstance(item, UploadFile):
                    raise HttpError(400, f"{f}: expected a file upload")
                out[f].append(await item.read())
    elif ctype == "application/json":
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HttpError(400, "malformed JSON body") from None
        if not isinstance(obj, dict):
            raise HttpError(400, "expected a JSON object")
        for f in fields:
            v = obj.get(f)
            if v is None:
                continue
            values = v if (many and isinstance(v, list)) else [v]
            if len(values) > MAX_PHOTOS:
                raise HttpError(413, f"{f}: at most {MAX_PHOTOS} photos per request")
            out[f] = [_b64(x, f) for x in values]
    else:
        raise HttpError(415, "send photos as multipart/form-data or as base64 in application/json")
    for f in fields:
        if not out[f]:
            raise HttpError(400, f"missing {f}")
        if not many and len(out[f]) > 1:
            raise HttpError(400, f"one {f} expected")
    return out


def _photo_body(fields: dict[str, str], many: bool = False) -> dict:
    """OpenAPI request body for photo fields (multipart files or base64 JSON)."""
    one = {"type": "string", "format": "binary"}
    props_mp = {f: ({"type": "array", "items": one} if many else one) for f in fields}
    b64 = {"type": "string", "description": "base64 (a data: URL is accepted)"}
    props_js = {f: ({"type": "array", "items": b64} if many else b64) for f in fields}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": props_mp, "required": list(fields)}},
                "application/json": {"schema": {"type": "object", "properties": props_js, "required": list(fields)}},
            },
        }
    }


# ---------------------------------------------------------------- the app


def create_app(settings: ServiceSettings):
    """The FastAPI app for ``settings`` (models are loaded when the app starts, not here)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from openface_py import __version__

    state: dict[str, Service] = {}

    async def save_loop(service: Service) -> None:
        def save() -> None:
            with service.db_lock:
                service.save_index()

        while True:
            await asyncio.sleep(settings.index_save_s)
            try:
                await asyncio.to_thread(save)
            except Exception:  # e.g. a full disk: the database is safe; try again next time
                log.exception("saving the index failed (it is caught up from the database on the next start)")

    @asynccontextmanager
    async def lifespan(app):
        service = await asyncio.to_thread(Service, settings)
        state["service"] = service
        saver = asyncio.create_task(save_loop(service))
        log.info("serving %s (%s)", settings.db, service.db.identity)
        try:
            yield
        finally:
            saver.cancel()
            await asyncio.to_thread(service.close)

    app = FastAPI(
        title="openface-py",
        version=__version__,
        description="Face detection, embedding, verification and 1:N identification against a face database.",
        lifespan=lifespan,
    )

    def svc() -> Service:
        return state["service"]

    def check_key(request: Request, write: bool) -> None:
        if not (write or settings.protect_all):
            return
        if not settings.api_key:
            raise HttpError(403, "writes are disabled: start the server with --api-key or " + API_KEY_ENV)
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HttpError(401, "missing or wrong API key (X-API-Key header)", {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(HttpError)
    async def http_error(request, exc: HttpError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request, exc):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        msgs = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": msgs}, status_code=422)

    @app.exception_handler(UsageError)
    async def usage_error(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (logged by the server)"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return resources.files("openface_py.service").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/v1/health", summary="liveness, model and database counts")
    async def health():
        s = svc()

        def read() -> dict:
            with s.db_lock:
                return s.db.info()

        info = await asyncio.to_thread(read)
        return {
            "status": "ok",
            "version": __version__,
            "model": info["identity"],
            "people": info["people"],
            "faces": info["faces"],
            "threshold": info["threshold"],
            "threshold_source": info["threshold_source"],
            "queue": {"pending": s.pending, "limit": settings.max_queue},
            "writes_enabled": bool(settings.api_key),
        }

    @app.post(
        "/v1/detect", summary="faces in a photo: boxes, scores, 68 landmarks", openapi_extra=_photo_body({"photo": ""})
    )
    async def detect(request: Request):
        check_key(request, write=False)

        def work(pipe, data: bytes) -> dict:
            rgb = svc().decode(data)
            aligned = pipe.faces(rgb, multi=True)
            return {
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "faces": [
                    {"box": a.box.as_list(), "score": round(float(a.score), 4),
                     "landmarks": np.round(a.landmarks, 1).tolist()}
                    for a in aligned
                ],
            }  # fmt: skip

        async with svc().slot():
            data = (await photos_from(request, settings.max_upload_bytes, ("photo",)))["photo"][0]
            return await svc().run(work, data)

    @app.post("/v1/embed", summary="the embedding of every face in a photo", openapi_extra=_photo_body({"photo": ""}))
    async def embed(request: Request):
        check_key(request, write=False)

        def work(pipe, data: bytes) -> dict:
            _, faces = svc().faces(pipe, data)
            return {"model": pipe.embedder.identity, "faces": [f.to_json() for f in faces]}

        async with svc().slot():
            data = (await photos_from(request, settings.max_upload_bytes, ("photo",)))["photo"][0]
            return await svc().run(work, data)

    @app.post(
        "/v1/verify",
        summary="are the largest faces of two photos the same person?",
        openapi_extra=_photo_body({"photo1": "", "photo2": ""}),
    )
    async def verify(request: Request):
        check_key(request, write=False)
        async with svc().slot():
            got = await photos_from(request, settings.max_upload_bytes, ("photo1", "photo2"))
            return await svc().run(svc().verify, got["photo1"][0], got["photo2"][0])

    @app.post(
        "/v1/identify", summary="name every face of a photo (or unknown)", openapi_extra=_photo_body({"photo": ""})
    )
    async def identify(request: Request, top_k: int = 1):
        check_key(request, write=False)
        if not 1 <= top_k <= settings.max_top_k:
            raise HttpError(422, f"top_k must be between 1 and {settings.max_top_k}")
        async with svc().slot():
            data = (await photos_from(request, settings.max_upload_bytes, ("photo",)))["photo"][0]
            return await svc().run(svc().identify, data, top_k)

    @app.get("/v1/people", summary="the enrolled people")
    async def people(request: Request):
        check_key(request, write=False)
        s = svc()

        def read() -> list:
            with s.db_lock:
                return s.db.people()

        rows = await asyncio.to_thread(read)
        return {"people": [{"name": p.name, "photos": p.photos, "faces": p.faces} for p in rows]}

    @app.post(
        "/v1/people/{name}/faces",
        status_code=201,
        summary="enroll photos of a person (the largest face of each); needs the API key",
        openapi_extra=_photo_body({"photos": ""}, many=True),
    )
    async def enroll(name: str, request: Request):
        check_key(request, write=True)
        name = valid_name(name)
        async with svc().slot():
            photos = (await photos_from(request, settings.max_upload_bytes, ("photos",), many=True))["photos"]
            out = await svc().run(svc().enroll, name, photos)
        if not any("status" in p for p in out["photos"]):
            reasons = "; ".join(f"photo {p['index']}: {p['error']}" for p in out["photos"])
            raise HttpError(422, f"nothing enrolled: {reasons}")
        return out

    @app.delete("/v1/people/{name}", summary="remove a person and their faces; needs the API key")
    async def remove(name: str, request: Request):
        check_key(request, write=True)
        s = svc()

        def work(_pipe):
            with s.db_lock:
                if name not in {p.name for p in s.db.people()}:
                    raise HttpError(404, f"no person named {name!r}")
                n = s.db.remove_person(name)
                s.dirty = True
            return {"name": name, "removed_faces": n}

        async with s.slot():
            return await s.run(work)

    return app


def app_from_env():
    """Factory for worker processes (``serve --workers N``): settings from ``OPENFACE_PY_SERVE``."""
    import os

    raw = json.loads(os.environ["OPENFACE_PY_SERVE"])
    raw["api_key"] = os.environ.get(API_KEY_ENV) or None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return create_app(ServiceSettings(**raw))


def wait_until_up(url: str, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200 (used by tests and the benchmark)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up in {timeout:.0f} s")
        time.sleep(0.25)
