"""HTTP API for a trained classifier: FastAPI routes, request limits and micro-batching.

Requests that arrive within ``batch_window_ms`` of each other are collected into one batch of up
to ``max_batch_size`` texts. The batch is sorted by length and scored in forward passes of
``forward_batch_size`` texts, so throughput grows with the number of concurrent clients while
short texts are not padded to the longest one. One
worker thread runs the model, so the event loop keeps accepting requests while a batch runs.

Status codes of ``POST /predict``:

- 200: scored;
- 400: malformed JSON;
- 413: too many texts, a text over the character limit, or a body too large;
- 422: wrong types, an empty list or a blank text;
- 503: too many texts already waiting to be scored;
- 500: an internal error, which is logged and does not stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from . import __version__
from .config import ServeConfig
from .inference import Classifier, softmax

log = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000
"""Latest request latencies kept for the p50/p99 figures logged at shutdown."""


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(description="Texts to classify.")


class Prediction(BaseModel):
    label: str = Field(description="Most probable label.")
    probabilities: dict[str, float] = Field(description="Probability per label, in label order.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One prediction per text, in request order.")


class ErrorResponse(BaseModel):
    error: str
    detail: Any = None


class RequestError(Exception):
    """A request the server rejects with a 4xx or 5xx status and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """Collect concurrent requests into batches and score each batch on one worker thread."""

    def __init__(self, classifier: Classifier, config: ServeConfig):
        self.classifier = classifier
        self.max_batch_size = config.max_batch_size
        self.forward_batch_size = config.forward_batch_size
        self.window_s = config.batch_window_ms / 1000.0
        self.max_pending = config.max_pending_texts
        self.pending_texts = 0
        self.batches = 0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptclf-score")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gptclf-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def probabilities(self, texts: list[str]) -> np.ndarray:
        """Class probabilities for ``texts``, (n, C), scored together with other waiting requests."""
        if self.pending_texts + len(texts) > self.max_pending:
            raise RequestError(503, f"server busy: {self.pending_texts} texts are waiting to be scored; retry shortly")
        item = _Pending(texts, asyncio.get_running_loop().create_future())
        self.pending_texts += len(texts)
        try:
            self._queue.put_nowait(item)
            return await item.future
        finally:
            self.pending_texts -= len(texts)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carried: _Pending | None = None
        while True:
            first = carried or await self._queue.get()
            batch, carried = await self._collect(first)
            batch = [item for item in batch if not item.future.done()]  # drop requests whose client left
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._score_batch, batch)
            except Exception as err:  # the server must outlive any failure of one batch
                log.exception("scoring a batch of %d requests failed", len(batch))
                results = [RequestError(500, f"scoring failed ({type(err).__name__}); see the server log")] * len(batch)
            self.batches += 1
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    async def _collect(self, first: _Pending) -> tuple[list[_Pending], _Pending | None]:
        """Wait up to the window for more requests; return the batch and a request that did not fit."""
        loop = asyncio.get_running_loop()
        batch, count = [first], len(first.texts)
        deadline = loop.time() + self.window_s
        while count < self.max_batch_size:
            remaining = deadline - loop.time()
            try:
                item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if count + len(item.texts) > self.max_batch_size:
                return batch, item
            batch.append(item)
            count += len(item.texts)
        return batch, None

    def _score_batch(self, batch: list[_Pending]) -> list[np.ndarray | Exception]:
        """Tokenise each request on its own, so one bad request fails alone, then score all together."""
        encoded: list[list[list[int]] | Exception] = []
        for item in batch:
            try:
                encoded.append(self.classifier.encode(item.texts))
            except (TypeError, ValueError) as err:
                encoded.append(RequestError(422, str(err)))
        ids = [row for item_ids in encoded if not isinstance(item_ids, Exception) for row in item_ids]
        probs = softmax(self.classifier.logits_from_ids(ids, batch_size=self.forward_batch_size))  # (n, C)
        results: list[np.ndarray | Exception] = []
        start = 0
        for item_ids in encoded:
            if isinstance(item_ids, Exception):
                results.append(item_ids)
                continue
            results.append(probs[start : start + len(item_ids)])
            start += len(item_ids)
        return results


class ServerStats:
    """Request counts by status and recent latencies, logged at shutdown."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.texts = 0
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, status: int, latency_ms: float, texts: int) -> None:
        self.statuses[status] += 1
        self.texts += texts
        self.latencies_ms.append(latency_ms)

    def summary(self) -> str:
        total = sum(self.statuses.values())
        errors = sum(n for status, n in self.statuses.items() if status >= 400)
        if self.latencies_ms:
            p50, p99 = np.percentile(np.array(self.latencies_ms), [50, 99])
            latency = f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        else:
            latency = "no latencies"
        return f"{total} requests ({errors} errors, statuses {dict(sorted(self.statuses.items()))}), {self.texts} texts scored, {latency}"


def create_app(classifier: Classifier, config: ServeConfig | None = None, source: str = "") -> FastAPI:
    """Build the FastAPI app for ``classifier``; ``source`` is the folder it was loaded from, for logs."""
    config = config or ServeConfig()
    config.validate()
    batcher = MicroBatcher(classifier, config)
    stats = ServerStats()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info(
            "serving %s: labels %s, max batch %d texts, window %.1f ms, max %d texts of %d characters per request",
            source or "classifier", classifier.labels, config.max_batch_size, config.batch_window_ms, config.max_texts, config.max_text_chars,
        )
        try:
            yield
        finally:
            await batcher.stop()
            log.info("server stopped after %d batches: %s", batcher.batches, stats.summary())

    app = FastAPI(title="gptclf", version=__version__, description="Text classification with a LoRA-tuned GPT-style decoder.", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.stats = stats
    _add_error_handlers(app)
    _add_request_logging(app, config, stats)
    _add_routes(app, classifier, config, batcher, source)
    return app


def _add_routes(app: FastAPI, classifier: Classifier, config: ServeConfig, batcher: MicroBatcher, source: str) -> None:
    error_responses = {status: {"model": ErrorResponse} for status in (400, 413, 422, 500, 503)}

    @app.post("/predict", response_model=PredictResponse, responses=error_responses)
    async def predict(body: PredictRequest, request: Request) -> PredictResponse:
        """Classify texts: per text, the label (by the stored threshold, else the most probable) and every label's probability."""
        _check_limits(body.texts, config)
        request.state.texts = len(body.texts)
        if config.log_texts:
            log.info("request texts: %r", body.texts)
        probs = await batcher.probabilities(body.texts)
        labels = classifier.labels
        chosen = classifier.decide(probs)
        predictions = [
            Prediction(label=labels[int(k)], probabilities={name: float(p) for name, p in zip(labels, row)})
            for k, row in zip(chosen, probs)
        ]
        return PredictResponse(predictions=predictions)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded and the server accepts requests."""
        return {"status": "ok", "pending_texts": batcher.pending_texts}

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """Labels, base model, package versions and request limits."""
        meta = classifier.meta
        return {
            "labels": classifier.labels,
            "base_model": meta.base_model,
            "package_version": __version__,
            "trained_with_version": meta.package_version,
            "classifier": Path(source).name if source else None,
            "max_length_tokens": meta.max_length,
            "pooling": meta.pooling,
            "dtype": classifier.dtype,
            "limits": {"max_texts": config.max_texts, "max_text_chars": config.max_text_chars, "max_batch_size": config.max_batch_size},
        }


def _check_limits(texts: list[str], config: ServeConfig) -> None:
    if not texts:
        raise RequestError(422, "`texts` is empty; send at least one text")
    if len(texts) > config.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the maximum is {config.max_texts}, so split the request")
    for i, text in enumerate(texts):
        if len(text) > config.max_text_chars:
            raise RequestError(413, f"text at position {i} has {len(text)} characters; the maximum is {config.max_text_chars}")
        if not text.strip():
            raise RequestError(422, f"text at position {i} is blank; every text needs at least one non-space character")


def _max_body_bytes(config: ServeConfig) -> int:
    # A JSON-escaped character takes at most 12 bytes (a surrogate pair written as two \uXXXX).
    return config.max_texts * (12 * config.max_text_chars + 8) + 1024


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        request.state.error = err.message
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(err.errors(), exclude={"input", "ctx", "url"})
        if any(e.get("type") == "json_invalid" for e in errors):
            request.state.error = "malformed JSON"
            return JSONResponse({"error": "malformed JSON in the request body", "detail": errors}, status_code=400)
        # The log gets the error types and places only, because the inputs may contain request text.
        request.state.error = "invalid request: " + ", ".join(f"{e.get('type')} at {e.get('loc')}" for e in errors[:3])
        message = 'invalid request: the body must be a JSON object {"texts": [...]} with a list of strings'
        return JSONResponse({"error": message, "detail": errors}, status_code=422)


def _add_request_logging(app: FastAPI, config: ServeConfig, stats: ServerStats) -> None:
    max_body = _max_body_bytes(config)

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        start = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            request.state.error = f"request body of {length} bytes exceeds the limit of {max_body} bytes"
            response = JSONResponse({"error": request.state.error}, status_code=413)
        else:
            try:
                response = await call_next(request)
            except Exception as err:  # an unexpected failure returns 500 and the server keeps running
                log.error("%s %s failed: %s: %s", request.method, request.url.path, type(err).__name__, err, exc_info=err)
                request.state.error = f"internal error ({type(err).__name__})"
                response = JSONResponse({"error": f"{request.state.error}; see the server log"}, status_code=500)
        latency_ms = (time.perf_counter() - start) * 1000.0
        texts = getattr(request.state, "texts", 0) if response.status_code == 200 else 0
        stats.record(response.status_code, latency_ms, texts)
        if response.status_code < 400:
            log.info("%s %s %d texts=%d latency_ms=%.1f", request.method, request.url.path, response.status_code, texts, latency_ms)
        else:
            error = getattr(request.state, "error", "")
            log.warning("%s %s %d latency_ms=%.1f error: %s", request.method, request.url.path, response.status_code, latency_ms, error)
        return response


def serve(classifier_dir: str | Path, config: ServeConfig | None = None, base_model: str | None = None, dtype: str = "auto") -> None:
    """Load a classifier and serve it over HTTP until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    config = config or ServeConfig()
    config.validate()
    classifier = Classifier.load(classifier_dir, base_model=base_model, dtype=dtype)
    app = create_app(classifier, config, source=str(classifier_dir))
    # access_log is off because gptclf logs each request with its latency; log_config=None
    # keeps the logging set up by the command line.
    uvicorn.run(app, host=config.host, port=config.port, log_config=None, access_log=False)
