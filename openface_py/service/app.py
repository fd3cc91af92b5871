"""The HTTP service (``openface-py serve``): FastAPI over a face database.

JSON API under ``/v1`` (detect, embed, verify, identify, people, enroll, delete, health; for
organising a photo collection: unnamed clusters, a person's faces, face thumbnails, and name,
merge, reject, forget over ``recognize.dbcluster``), the OpenAPI docs at ``/docs``, a web page
at ``/`` (with a People view of those). Photos come as multipart uploads or base64 in JSON.
Design points:

- Photos are decoded, detected and embedded in ``inference_threads`` worker processes
  (``service.inference``), each with its own models, loaded once at start-up: a photo that
  crashes native code or runs past ``inference_timeout_s`` costs a worker (replaced in the
  background) and gets a 422, never the server. With ``embed_batching`` (the default on a GPU)
  the workers only decode, detect and align; the server process holds one embedder on the device
  and embeds the aligned faces of concurrent requests in shared batches (``service.batcher``):
  fixed-size uint8 faces, which no photo can turn into a crash. Admission is bounded: at most
  ``max_queue`` requests are running or waiting for a worker; one more is answered 503 with
  ``Retry-After`` at once (no unbounded backlog).
- Requests are bounded (``Content-Length`` required, at most ``max_upload_bytes``; photos at
  most ``max_pixels``). Bodies are read against a budget of ``max_buffered_bytes`` (claimed
  from ``Content-Length`` before reading) and a deadline (``body_timeout_s`` without a byte, a
  minimum rate overall), so idle or slow clients are cut off with 408 and cannot hold the
  inference slots. Bad photos get 4xx with the reason; any unexpected error is logged here and
  answered 500 without details: clients never see a stack trace.
- ``service.guard`` refuses other Host names (DNS rebinding), cross-origin browser requests
  and ambiguous framing before any route runs. The API docs at ``/docs`` need no internet.
- Writes (enroll, delete, the people actions) need the API key (``X-API-Key`` or ``Authorization: Bearer``,
  compared in constant time); without a configured key they are refused. ``protect_all``
  puts every endpoint but the page and ``/v1/health`` behind the key. Names are validated and
  nothing a client sends becomes a file path.
- Every write is one SQLite transaction, acknowledged only after it committed; a database that
  cannot be written (read-only, full disk, damaged) is answered 503/507 with the cause, and
  ``/v1/health`` says so (``writes_enabled``). The FAISS index
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
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from openface_py.device import default_batch, is_gpu, resolve_device
from openface_py.errors import DatabaseError, ImageLoadError, OpenFacePyError, UsageError
from openface_py.faces.detect import DetectorSpec
from openface_py.io import load_image
from openface_py.nets.embed import load_embedder
from openface_py.recognize import dbcluster
from openface_py.recognize.dbcluster import NotFoundError
from openface_py.recognize.facedb import FaceDatabase, FaceRecord, quote_name, valid_name
from openface_py.recognize.verify import verify
from openface_py.service.batcher import DEFAULT_WINDOW_S, BatcherClosed, EmbedBatcher
from openface_py.service.guard import RequestGuard, default_allowed_hosts
from openface_py.service.inference import InferencePool, PhotoCrashed, PhotoError, PhotoTimedOut, WorkerSpec

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENFACE_PY_API_KEY"
#: photos (files or base64 strings) accepted in one request
MAX_PHOTOS = 64
#: the largest JSON body of the people actions (name, merge, reject)
MAX_JSON_BODY = 16 * 1024
#: face thumbnails: the default and allowed sizes (pixels, square), the largest photo file read
#: for one, how many are kept in memory
THUMB_SIZE = 96
THUMB_SIZES = (32, 256)
MAX_PHOTO_FILE = 256 * 1024 * 1024
THUMB_CACHE = 2048
#: faces listed per request at most
MAX_FACES_LISTED = 1000
#: face ids are SQLite rowids
MAX_FACE_ID = 2**63 - 1


@dataclass
class ServiceSettings:
    """How ``serve`` runs (also passed to worker processes as JSON)."""

    db: str
    api_key: Optional[str] = None
    protect_all: bool = False
    detector: DetectorSpec = DetectorSpec()
    #: where MTCNN (in the inference workers) and the embedder run (``openface_py.device``)
    device: str = "auto"
    #: one embedder in the server process embeds the faces the workers aligned, concurrent requests
    #: batched together (``service.batcher``); None: on when ``device`` is a GPU
    embed_batching: Optional[bool] = None
    #: how long a batch waits for more requests after its first (milliseconds)
    embed_window_ms: float = DEFAULT_WINDOW_S * 1e3
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    inference_threads: int = 2
    inference_timeout_s: float = 60.0
    max_queue: int = 32
    index_save_s: float = 30.0
    max_top_k: int = 20
    #: request bodies being read at once may hold at most this many bytes (claimed from Content-Length)
    max_buffered_bytes: int = 160 * 1024 * 1024
    #: a body that sends nothing for this long is cut off (408), and so is one slower than min_body_rate
    body_timeout_s: float = 10.0
    #: a request's headers must be complete this long after the connection opened or the last answer
    header_timeout_s: float = 20.0
    min_body_rate: int = 32 * 1024
    allowed_hosts: list = field(default_factory=lambda: default_allowed_hosts("127.0.0.1"))
    cors_origins: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "detector": self.detector.to_dict()})

    @classmethod
    def from_json(cls, data: dict) -> "ServiceSettings":
        return cls(**{**data, "detector": DetectorSpec.from_dict(data["detector"])})


class HttpError(Exception):
    """An answer with a status, a reason and optional headers (turned into JSON by the app)."""

    def __init__(self, status: int, detail: str, headers: Optional[dict] = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class Service:
    """What one server process holds: the database, the inference workers and the admission counters."""

    def __init__(self, settings: ServiceSettings) -> None:
        import faiss

        # one probe per request: FAISS's OpenMP threads would only spin against the inference workers
        faiss.omp_set_num_threads(1)
        self.settings = settings
        self.db = FaceDatabase.open(settings.db)
        self.db_lock = threading.Lock()
        n = max(1, int(settings.inference_threads))
        self.device = resolve_device(settings.device)
        batching = is_gpu(self.device) if settings.embed_batching is None else bool(settings.embed_batching)
        spec = WorkerSpec(
            model=self.db.model,
            detector=settings.detector,
            max_pixels=settings.max_pixels,
            device=self.device,
            embed=not batching,
        )
        self.pool = InferencePool(spec, n, timeout_s=settings.inference_timeout_s)
        #: the shared embedder (None: each worker embeds its own faces)
        self.batcher: Optional[EmbedBatcher] = None
        try:
            if batching:
                # on a CPU one thread: the workers' detection holds the cores, and an ONNX Runtime
                # pool of several would spin-wait on them between batches
                threads = None if is_gpu(self.device) else 1
                embedder = load_embedder(self.db.model, threads=threads, device=self.device)
                if self.pool.identity != embedder.alignment.identity:
                    raise OpenFacePyError(
                        f"the workers align for {self.pool.identity}; {embedder.name} needs "
                        f"{embedder.alignment.identity}"
                    )
                window = settings.embed_window_ms / 1e3
                self.batcher = EmbedBatcher(embedder, max_batch=default_batch(self.device), window_s=window)
            #: the identity of the embeddings this server makes (the database's, checked here)
            self.identity = self.pool.identity if self.batcher is None else self.batcher.embedder.identity
            if self.identity != self.db.identity:
                raise OpenFacePyError(
                    f"{self.db.model} now gives {self.identity}; {settings.db} holds {self.db.identity}"
                )
        except BaseException:
            self.pool.close()
            if self.batcher is not None:
                self.batcher.close()
            raise
        self.executor = ThreadPoolExecutor(n, thread_name_prefix="inference")
        self.pending = 0
        self.buffered = 0
        self.pending_lock = threading.Lock()
        self.dirty = False
        #: face thumbnails by (face id, photo content, box, size): a face id is never reused
        self.thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self.thumbs_lock = threading.Lock()
        with self.db_lock:
            self.db.sync_index()
            if self.db.writable() is None:
                self.db.save_index()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.pool.close()
        if self.batcher is not None:
            self.batcher.close()
        with self.db_lock:
            self.save_index()
            self.db.close()

    def save_index(self) -> None:
        if self.dirty:
            self.db.sync_index()
            self.db.save_index()
            self.dirty = False

    def _admit(self, counter: str, amount: int, limit: int, what: str) -> None:
        with self.pending_lock:
            if getattr(self, counter) + amount > limit:
                raise HttpError(503, f"server busy: {what}; retry shortly", {"Retry-After": "1"})
            setattr(self, counter, getattr(self, counter) + amount)

    def _release(self, counter: str, amount: int) -> None:
        with self.pending_lock:
            setattr(self, counter, getattr(self, counter) - amount)

    @asynccontextmanager
    async def slot(self):
        """Admission to inference: at most ``max_queue`` requests past this point; one more is
        answered 503 with ``Retry-After`` at once."""
        self._admit("pending", 1, self.settings.max_queue, "too many requests in progress")
        try:
            yield
        finally:
            self._release("pending", 1)

    @asynccontextmanager
    async def reading(self, request):
        """Admission to read a body: its ``Content-Length`` is claimed from ``max_buffered_bytes``
        before a byte is read (503 when the budget is spent), and given back when the request ends."""
        n = declared_length(request, self.settings.max_upload_bytes)
        self._admit("buffered", n, self.settings.max_buffered_bytes, "too many request bodies being received")
        try:
            yield n
        finally:
            self._release("buffered", n)

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """Run ``fn(*args)`` in the inference threads (off the event loop; they wait on the workers)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ------------------------------------------------------------ work done off the event loop
    def infer(self, op: str, data: bytes, *args, what: str = "photo") -> Any:
        """``op`` on a photo in an inference worker; the photo's problems become 422 with the reason."""
        try:
            return self.pool.call(op, data, *args)
        except PhotoError as exc:
            raise HttpError(422, f"{what}: {exc.reason}") from None
        except PhotoCrashed as exc:
            raise HttpError(422, f"{what}: the face pipeline crashed on this photo ({exc}); it is refused") from None
        except PhotoTimedOut as exc:
            raise HttpError(422, f"{what}: {exc}; it is refused") from None

    def faces(self, data: bytes, multi: bool = True, what: str = "photo") -> list[dict]:
        """The faces of a photo with their embeddings: from the worker, or with batching the
        worker's aligned faces embedded by the shared embedder."""
        faces = self.infer("faces", data, multi, what=what)
        if self.batcher is not None and faces:
            aligned = np.stack([f.pop("aligned") for f in faces])
            try:
                reps = self.batcher.embed(aligned, timeout=self.settings.inference_timeout_s)
            except TimeoutError:
                raise HttpError(503, "embedding is busy: try again", {"Retry-After": "1"}) from None
            except BatcherClosed:
                raise HttpError(503, "the server is stopping", {"Retry-After": "5"}) from None
            except Exception as exc:  # the device failed (out of memory, ...), not the photo
                raise HttpError(503, f"embedding failed ({type(exc).__name__}: {exc})", {"Retry-After": "1"}) from None
            for f, rep in zip(faces, reps):
                f["embedding"] = rep
        return faces

    def identify(self, data: bytes, top_k: int) -> dict:
        faces = self.faces(data)
        with self.db_lock:
            threshold = self.db.threshold
            if threshold is None:
                raise HttpError(409, "the database has no same-person threshold yet (see `openface-py db threshold`)")
            answers = self.db.identify(np.stack([f["embedding"] for f in faces]), top_k) if faces else []
        return {
            "threshold": threshold,
            "faces": [{"box": f["box"], **a.to_json()} for f, a in zip(faces, answers)],
        }

    def verify(self, a: bytes, b: bytes) -> dict:
        reps = []
        for data, what in ((a, "photo1"), (b, "photo2")):
            faces = self.faces(data, multi=False, what=what)
            if not faces:
                raise HttpError(422, f"{what}: no face found")
            reps.append(faces[0]["embedding"])
        with self.db_lock:
            threshold, calibration = self.db.threshold, self.db.calibration
        v = verify(reps[0], reps[1], threshold, calibration)
        return {
            "distance": round(v.distance, 6),
            "threshold": v.threshold,
            "same": v.same,
            "p_same": None if v.p_same is None else round(v.p_same, 4),
        }

    def enroll(self, name: str, photos: list[bytes]) -> dict:
        results, added = [], 0
        for k, data in enumerate(photos):
            try:
                faces = self.faces(data, multi=False)
            except HttpError as exc:
                results.append({"index": k, "error": exc.detail.removeprefix("photo: ")})
                continue
            if not faces:
                results.append({"index": k, "error": "no face found"})
                continue
            records = [FaceRecord(f["box"], np.asarray(f["embedding"], np.float32), f["landmarks"]) for f in faces]
            with self.db_lock:
                res = self.db.enroll(name, hashlib.sha256(data).hexdigest(), records, self.identity)
                self.dirty = True
            added += res.added_faces
            results.append({"index": k, "status": "duplicate" if res.duplicate else "enrolled"})
        return {"name": name, "added_faces": added, "photos": results}

    def thumbnail(self, face_id: int, size: int) -> bytes:
        """A ``size`` x ``size`` JPEG of a face, cropped from its photo's file as imported: the
        file is decoded only when its content is the one imported (the same bytes the import
        decoded), with ``max_pixels``; a missing or changed file is a 404 with the reason."""
        with self.db_lock:
            where = dbcluster.face_photo(self.db, face_id)
        key = (where.face_id, where.sha256, where.box, size)
        with self.thumbs_lock:
            if key in self.thumbs:
                self.thumbs.move_to_end(key)
                return self.thumbs[key]
        what = f"face {face_id}"
        if where.source is None:
            raise HttpError(404, f"{what}: its photo was uploaded, not imported from a file; there is no file to crop")
        path = Path(where.source)
        try:
            if not path.is_file():
                raise HttpError(404, f"{what}: its photo {where.source} is no longer there")
            if path.stat().st_size > MAX_PHOTO_FILE:
                raise HttpError(404, f"{what}: its photo {where.source} is over {MAX_PHOTO_FILE} bytes now")
            data = path.read_bytes()
        except OSError as exc:
            raise HttpError(404, f"{what}: its photo {where.source} cannot be read ({exc.strerror or exc})") from None
        if hashlib.sha256(data).hexdigest() != where.sha256:
            raise HttpError(404, f"{what}: its photo {where.source} changed since it was imported")
        try:
            rgb = load_image(data, max_pixels=self.settings.max_pixels)
        except ImageLoadError as exc:
            raise HttpError(404, f"{what}: its photo {where.source} cannot be decoded ({exc})") from None
        jpeg = encode_jpeg(face_crop(rgb, where.box, size))
        with self.thumbs_lock:
            self.thumbs[key] = jpeg
            while len(self.thumbs) > THUMB_CACHE:
                self.thumbs.popitem(last=False)
        return jpeg


def checked_face_id(face_id: int) -> int:
    """A face id from a path, 404 when no face can have it (SQLite would overflow)."""
    if not 1 <= face_id <= MAX_FACE_ID:
        raise HttpError(404, f"no face {face_id}")
    return face_id


def face_crop(rgb: np.ndarray, box: Sequence[int], size: int, margin: float = 0.3) -> np.ndarray:
    """A ``size`` x ``size`` crop around a face box (``margin`` of the box's larger side on
    each side), moved inside the photo rather than cut by its edges."""
    from PIL import Image

    h, w = rgb.shape[:2]
    left, top, right, bottom = (float(v) for v in box[:4])
    side = max(right - left, bottom - top, 1.0) * (1 + 2 * margin)
    side = int(round(min(side, w, h)))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x0 = int(round(min(max(cx - side / 2, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2, 0), h - side)))
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side]))
    return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """An RGB uint8 array as JPEG bytes."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


# ---------------------------------------------------------------- request parsing


def declared_length(request, limit: int) -> int:
    """The body's ``Content-Length``, checked against ``limit`` (411, 400, 413 otherwise)."""
    length = request.headers.get("content-length")
    if length is None:
        raise HttpError(411, "Content-Length required")
    if not length.isdigit():
        raise HttpError(400, "bad Content-Length")
    n = int(length)
    if n > limit:
        raise HttpError(413, f"request of {n} bytes is over the limit of {limit}")
    return n


async def read_body(request, n: int, idle_s: float, min_rate: float) -> bytes:
    """The body of ``n`` bytes, read within ``idle_s`` seconds between chunks and ``idle_s + n /
    min_rate`` seconds in all; a client that is slower gets 408 and its connection is closed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle_s + n / max(1.0, min_rate)
    chunks, got = [], 0
    stream = request.stream().__aiter__()
    while True:
        wait = min(idle_s, deadline - loop.time())
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise HttpError(
                408, f"request body too slow: {got} of {n} bytes received in time", {"Connection": "close"}
            ) from None
        chunks.append(chunk)
        got += len(chunk)
        if got > n:
            raise HttpError(400, "request body longer than its Content-Length", {"Connection": "close"})
    return b"".join(chunks)


async def json_fields(service: Service, request, fields: dict[str, bool]) -> dict[str, str]:
    """The string fields of a small JSON object body (``fields``: name -> required): 415 for
    another content type, 413 over ``MAX_JSON_BODY``, 400 for malformed JSON, 422 for a
    missing required field or one that is not a string."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HttpError(415, f"send a JSON object with {', '.join(fields)} (application/json)")
    declared_length(request, MAX_JSON_BODY)
    settings = service.settings
    async with service.reading(request) as n:
        body = await read_body(request, n, settings.body_timeout_s, settings.min_body_rate)
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HttpError(400, "malformed JSON body") from None
    if not isinstance(obj, dict):
        raise HttpError(422, f"expected a JSON object with {', '.join(fields)}")
    out = {}
    for f, required in fields.items():
        v = obj.get(f)
        if v is None:
            if required:
                raise HttpError(422, f"missing {f}")
            continue
        if not isinstance(v, str):
            raise HttpError(422, f"{f}: expected a string")
        out[f] = v
    return out


def _json_body(fields: dict[str, bool]) -> dict:
    """OpenAPI request body for ``json_fields`` (name -> required)."""
    props = {f: {"type": "string"} for f in fields}
    required = [f for f, r in fields.items() if r]
    schema = {"type": "object", "properties": props, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise HttpError(400, f"{field}: expected a base64 string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{field}: not valid base64") from None


async def photos_from(service: Service, request, fields: tuple[str, ...], many: bool = False) -> dict[str, list[bytes]]:
    """The photos of a request, by field: multipart files or base64 strings in a JSON object."""
    from starlette.datastructures import UploadFile

    settings = service.settings
    limit = settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/json"):
        raise HttpError(415, "send photos as multipart/form-data or as base64 in application/json")
    async with service.reading(request) as n:
        body = await read_body(request, n, settings.body_timeout_s, settings.min_body_rate)
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
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
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
            except Exception as exc:  # e.g. a full disk: the database is safe; try again next time
                log.error("saving the index failed: %s (it is caught up from the database on the next start)", exc)

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

    from fastapi_offline import FastAPIOffline
    from starlette.middleware.cors import CORSMiddleware

    # FastAPIOffline: /docs and /redoc with their scripts served from this package's dependency,
    # not a CDN (the docs of a loopback server work without internet)
    app = FastAPIOffline(
        title="openface-py",
        version=__version__,
        description="Face detection, embedding, verification and 1:N identification against a face database.",
        lifespan=lifespan,
    )

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(RequestGuard, allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins)

    def svc() -> Service:
        return state["service"]

    def check_writable() -> None:
        """Refuse a write before its photos are read (DatabaseError: 503, 507 for a full disk)."""
        svc().db.require_writable()

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

    @app.exception_handler(NotFoundError)
    async def not_found(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(DatabaseError)
    async def database_error(request, exc: DatabaseError):
        # the real cause in the log; the client learns what it can do about it
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        status = 507 if exc.kind == "full" else 503
        headers = {"Retry-After": "1"} if exc.kind == "locked" else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

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

        def read() -> tuple[dict, Optional[str]]:
            with s.db_lock:
                return s.db.info(), s.db.writable()

        info, unwritable = await asyncio.to_thread(read)
        return {
            "status": "ok",
            "version": __version__,
            "model": info["identity"],
            "people": info["people"],
            "faces": info["faces"],
            "threshold": info["threshold"],
            "threshold_source": info["threshold_source"],
            "queue": {"pending": s.pending, "limit": settings.max_queue},
            "receiving_bytes": s.buffered,
            "inference": s.pool.stats.to_json(),
            "embedding": s.batcher.stats.to_json() if s.batcher else {"batching": False, "device": s.device},
            "writes_enabled": bool(settings.api_key) and unwritable is None,
            "writes_disabled_because": ("no API key" if not settings.api_key else unwritable),
        }

    @app.post(
        "/v1/detect", summary="faces in a photo: boxes, scores, 68 landmarks", openapi_extra=_photo_body({"photo": ""})
    )
    async def detect(request: Request):
        check_key(request, write=False)
        data = (await photos_from(svc(), request, ("photo",)))["photo"][0]
        async with svc().slot():
            found = await svc().run(svc().infer, "detect", data)
        for face in found["faces"]:
            face["score"] = round(face["score"], 4)
            face["landmarks"] = np.round(face["landmarks"], 1).tolist()
        return found

    @app.post("/v1/embed", summary="the embedding of every face in a photo", openapi_extra=_photo_body({"photo": ""}))
    async def embed(request: Request):
        check_key(request, write=False)
        data = (await photos_from(svc(), request, ("photo",)))["photo"][0]
        async with svc().slot():
            faces = await svc().run(svc().faces, data)
        return {
            "model": svc().identity,
            "faces": [
                {"box": f["box"], "score": round(f["score"], 4), "aligned_from": f["aligned_from"],
                 "embedding": [round(float(v), 7) for v in f["embedding"]]}
                for f in faces
            ],
        }  # fmt: skip

    @app.post(
        "/v1/verify",
        summary="are the largest faces of two photos the same person?",
        openapi_extra=_photo_body({"photo1": "", "photo2": ""}),
    )
    async def verify(request: Request):
        check_key(request, write=False)
        got = await photos_from(svc(), request, ("photo1", "photo2"))
        async with svc().slot():
            return await svc().run(svc().verify, got["photo1"][0], got["photo2"][0])

    @app.post(
        "/v1/identify", summary="name every face of a photo (or unknown)", openapi_extra=_photo_body({"photo": ""})
    )
    async def identify(request: Request, top_k: int = 1):
        check_key(request, write=False)
        if not 1 <= top_k <= settings.max_top_k:
            raise HttpError(422, f"top_k must be between 1 and {settings.max_top_k}")
        data = (await photos_from(svc(), request, ("photo",)))["photo"][0]
        async with svc().slot():
            return await svc().run(svc().identify, data, top_k)

    @app.get("/v1/people", summary="the named people (by name); with clusters=true also the unnamed clusters")
    async def people(request: Request, clusters: bool = False):
        check_key(request, write=False)
        s = svc()

        def read() -> tuple[list, dict]:
            with s.db_lock:
                return s.db.people(), (s.db.info() if clusters else {})

        rows, info = await asyncio.to_thread(read)
        out: dict[str, Any] = {
            "people": [{"name": p.name, "photos": p.photos, "faces": p.faces} for p in rows if p.named]
        }
        if clusters:  # largest first (``FaceDatabase.people``)
            out["clusters"] = [{"label": p.name, "photos": p.photos, "faces": p.faces} for p in rows if not p.named]
            out["unassigned_faces"] = info["unassigned"]
        return out

    @app.get("/v1/people/{ref}/faces", summary="the faces of a person or cluster (ids, boxes, photo files)")
    async def person_faces(ref: str, request: Request, limit: int = MAX_FACES_LISTED):
        check_key(request, write=False)
        if not 1 <= limit <= MAX_FACES_LISTED:
            raise HttpError(422, f"limit must be between 1 and {MAX_FACES_LISTED}")
        s = svc()

        def read() -> tuple[dbcluster.PersonRef, list]:
            with s.db_lock:
                return dbcluster.find(s.db, ref), dbcluster.list_faces(s.db, ref)

        who, faces = await asyncio.to_thread(read)
        return {
            "name": who.name,
            "named": who.named,
            "total": len(faces),
            "faces": [{"id": f.id, "box": f.box, "source": f.source, "pinned": f.pinned} for f in faces[:limit]],
        }

    @app.get(
        "/v1/faces/{face_id}/thumbnail",
        summary="a square JPEG of a face, cropped from its photo's file",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def thumbnail(face_id: int, request: Request, size: int = THUMB_SIZE):
        check_key(request, write=False)
        if not THUMB_SIZES[0] <= size <= THUMB_SIZES[1]:
            raise HttpError(422, f"size must be between {THUMB_SIZES[0]} and {THUMB_SIZES[1]}")
        async with svc().slot():
            jpeg = await svc().run(svc().thumbnail, checked_face_id(face_id), size)
        # a face id is never reused, and the crop is made only from the photo as imported
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def write(fn: Callable[..., Any], *args) -> Any:
        """A people action in the database lock (one transaction of ``dbcluster``); the index
        catches up with it (``save_index``, and every search syncs it)."""
        s = svc()

        def work():
            with s.db_lock:
                out = fn(s.db, *args)
                s.dirty = True
            return out

        async with s.slot():
            return await asyncio.to_thread(work)

    @app.post(
        "/v1/people/{ref}/name",
        summary="name a cluster (or rename a person); a name someone has merges the two; needs the API key",
        openapi_extra=_json_body({"name": True}),
    )
    async def name_person(ref: str, request: Request):
        check_key(request, write=True)
        check_writable()
        name = valid_name((await json_fields(svc(), request, {"name": True}))["name"])

        def rename(db: FaceDatabase) -> dict:
            return {"was": dbcluster.find(db, ref).name, "name": dbcluster.name_person(db, ref, name)}

        return await write(rename)

    @app.post(
        "/v1/people/merge",
        summary="one person of two (b's faces into a; a named one keeps its name); needs the API key",
        openapi_extra=_json_body({"a": True, "b": True}),
    )
    async def merge_people(request: Request):
        check_key(request, write=True)
        check_writable()
        got = await json_fields(svc(), request, {"a": True, "b": True})
        return {"name": await write(dbcluster.merge_people, got["a"], got["b"])}

    @app.delete("/v1/faces/{face_id}", summary="remove a face for good (not imported again); needs the API key")
    async def forget_face(face_id: int, request: Request):
        check_key(request, write=True)
        check_writable()
        return {"forgotten": await write(dbcluster.forget_faces, [checked_face_id(face_id)])}

    @app.post(
        "/v1/faces/{face_id}/reject",
        summary="this face is not PERSON (default: its person now): it leaves and never goes back; needs the API key",
        openapi_extra=_json_body({"person": False}),
    )
    async def reject_face(face_id: int, request: Request):
        check_key(request, write=True)
        check_writable()
        checked_face_id(face_id)
        person = (await json_fields(svc(), request, {"person": False})).get("person")

        def reject(db: FaceDatabase) -> dict:
            ref = person
            if ref is None:
                ref = dbcluster.face_photo(db, face_id).person
                if ref is None:
                    raise HttpError(422, f"face {face_id} belongs to no one: say which person it is not")
            return {"person": dbcluster.find(db, ref).name, "left": dbcluster.reject_faces(db, [face_id], ref)}

        return await write(reject)

    @app.post(
        "/v1/people/{name}/faces",
        status_code=201,
        summary="enroll photos of a person (the largest face of each); needs the API key",
        openapi_extra=_photo_body({"photos": ""}, many=True),
    )
    async def enroll(name: str, request: Request):
        check_key(request, write=True)
        name = valid_name(name)
        check_writable()
        photos = (await photos_from(svc(), request, ("photos",), many=True))["photos"]
        async with svc().slot():
            out = await svc().run(svc().enroll, name, photos)
        if not any("status" in p for p in out["photos"]):
            reasons = "; ".join(f"photo {p['index']}: {p['error']}" for p in out["photos"])
            raise HttpError(422, f"nothing enrolled: {reasons}")
        return out

    @app.delete("/v1/people/{name}", summary="remove a person and their faces; needs the API key")
    async def remove(name: str, request: Request):
        check_key(request, write=True)
        check_writable()
        s = svc()

        def work():
            with s.db_lock:
                stored = s.db.find_person(name)  # the name as enrolment normalised it
                if stored is None:
                    raise HttpError(404, f"no person named {quote_name(name)}")
                n = s.db.remove_person(stored)
                s.dirty = True
            return {"name": stored, "removed_faces": n}

        async with s.slot():
            return await asyncio.to_thread(work)

    return app


def app_from_env():
    """Factory for worker processes (``serve --workers N``): settings from ``OPENFACE_PY_SERVE``."""
    import os

    raw = json.loads(os.environ["OPENFACE_PY_SERVE"])
    raw["api_key"] = os.environ.get(API_KEY_ENV) or None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return create_app(ServiceSettings.from_json(raw))


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
