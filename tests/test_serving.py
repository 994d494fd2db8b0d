import asyncio
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from gptclf import Classifier, train
from gptclf.config import ServeConfig
from gptclf.errors import ConfigError
from gptclf.serving import create_app

from conftest import sentiment_rows, write_tsv

TEXTS = ["the film was good", "the food was awful and the service was poor , i felt", "fun !", "a dull , weak and tedious story"]
LIMITS = dict(max_texts=8, max_text_chars=200, max_batch_size=16, batch_window_ms=5.0)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, base_models):
    root = tmp_path_factory.mktemp("serving")
    data = write_tsv(root / "train.tsv", sentiment_rows(32, seed=3))
    folder = root / "clf"
    train(train=str(data), output=str(folder), model=str(base_models["gpt2"]), max_steps=2, batch_size=8, lora_r=4)
    return folder


@pytest.fixture(scope="module")
def classifier(classifier_dir):
    return Classifier.load(classifier_dir, dtype="fp32")


class RunningServer:
    """uvicorn in a background thread on a free loopback port; stops when the test module ends."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free port
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread exited during start-up"
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def server(classifier):
    app = create_app(classifier, ServeConfig(**LIMITS), source="tiny-gpt2")
    with RunningServer(app) as running:
        running.app = app
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def test_predict_matches_classifier(client, classifier):
    response = client.post("/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == classifier.predict(TEXTS)
    probs = np.array([[p["probabilities"][name] for name in classifier.labels] for p in predictions])
    np.testing.assert_allclose(probs, classifier.predict_proba(TEXTS), atol=1e-5)
    assert list(predictions[0]["probabilities"]) == classifier.labels


def test_health_and_metadata(client, classifier):
    assert client.get("/health").json()["status"] == "ok"
    metadata = client.get("/metadata").json()
    assert metadata["labels"] == classifier.labels
    assert metadata["base_model"]["fingerprint"] == classifier.meta.base_model["fingerprint"]
    assert metadata["package_version"]
    assert metadata["limits"]["max_texts"] == LIMITS["max_texts"]


def test_openapi_docs_served(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"]


BAD_REQUESTS = [
    ("malformed JSON", b'{"texts": ["good"', 400, "malformed JSON"),
    ("not an object", b'["good"]', 422, "invalid request"),
    ("texts not a list", b'{"texts": "good"}', 422, "invalid request"),
    ("number in texts", b'{"texts": ["good", 3]}', 422, "invalid request"),
    ("null in texts", b'{"texts": [null]}', 422, "invalid request"),
    ("missing texts", b'{"text": ["good"]}', 422, "invalid request"),
    ("empty list", b'{"texts": []}', 422, "is empty"),
    ("blank text", b'{"texts": ["good", "   "]}', 422, "position 1 is blank"),
    ("too many texts", json.dumps({"texts": ["good"] * 9}).encode(), 413, "maximum is 8"),
    ("text too long", json.dumps({"texts": ["good", "a" * 201]}).encode(), 413, "position 1 has 201 characters"),
    ("body too large", json.dumps({"texts": ["a" * 200_000]}).encode(), 413, "exceeds the limit"),
]


@pytest.mark.parametrize("body, status, message", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_status(client, body, status, message):
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert client.get("/health").status_code == 200


def test_scoring_failure_returns_500_and_recovers(server, client, monkeypatch, caplog):
    def fail(batch):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(server.app.state.batcher, "_score_batch", fail)
    with caplog.at_level("INFO", logger="gptclf.serving"):
        response = client.post("/predict", json={"texts": TEXTS})
    assert response.status_code == 500
    assert "scoring failed (RuntimeError)" in response.json()["error"]
    assert "simulated failure" in caplog.text
    monkeypatch.undo()
    assert client.post("/predict", json={"texts": TEXTS}).status_code == 200


def test_handler_failure_returns_500(client, monkeypatch):
    import gptclf.serving

    def fail(texts, config):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(gptclf.serving, "_check_limits", fail)
    response = client.post("/predict", json={"texts": TEXTS})
    assert response.status_code == 500
    assert "internal error (RuntimeError)" in response.json()["error"]
    monkeypatch.undo()
    assert client.post("/predict", json={"texts": TEXTS}).status_code == 200


def test_request_text_not_logged_unless_asked(client, caplog):
    with caplog.at_level("INFO", logger="gptclf.serving"):
        assert client.post("/predict", json={"texts": ["a secret review that was good"]}).status_code == 200
    assert "POST /predict 200 texts=1" in caplog.text
    assert "secret" not in caplog.text


async def _load_test(url: str, clients: int, requests_each: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async def one_client(c: int) -> list[int]:
            statuses = []
            for r in range(requests_each):
                texts = [TEXTS[(c + r) % len(TEXTS)]] * (1 + (c + r) % 3)
                response = await http.post("/predict", json={"texts": texts})
                statuses.append(response.status_code)
                assert len(response.json()["predictions"]) == len(texts)
            return statuses

        results = await asyncio.gather(*(one_client(c) for c in range(clients)))
    return [s for statuses in results for s in statuses]


def test_concurrent_clients_batched_without_errors(server):
    batches_before = server.app.state.batcher.batches
    statuses = asyncio.run(_load_test(server.url, clients=32, requests_each=4))
    assert statuses == [200] * 128
    batches = server.app.state.batcher.batches - batches_before
    assert batches < 128, "concurrent requests were not batched together"


def test_invalid_serve_settings_rejected(classifier):
    with pytest.raises(ConfigError) as err:
        create_app(classifier, ServeConfig(max_batch_size=0, batch_window_ms=-1, max_texts=10, max_pending_texts=5))
    for expected in ("--max-batch-size", "--batch-window-ms", "--max-pending-texts"):
        assert expected in str(err.value)


@pytest.mark.slow
def test_serve_command_starts_and_stops(classifier_dir):
    import re
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "gptclf", "serve", str(classifier_dir), "--port", "0", "--host", "127.0.0.1"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "the server exited before it started:\n" + "".join(lines)
            lines.append(line)
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line, re.IGNORECASE)
            url = found.group(1) if found else None
        assert url, "no start-up line within 120 s:\n" + "".join(lines)
        response = httpx.post(url + "/predict", json={"texts": TEXTS}, timeout=30)
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[1]
    log = "".join(lines) + rest
    assert "serving" in log
    assert "server stopped after" in log
    assert "1 requests (0 errors" in log
