"""The model server of the training image: SageMaker's container contract for inference.

SageMaker starts a hosting or batch-transform container as ``docker run <image> serve``
(``/usr/local/bin/serve`` in ``training/Dockerfile`` runs ``python -m training.serve``), with
the model package's ``model.tar.gz`` extracted into ``/opt/ml/model``, and then talks HTTP
on port 8080:

- ``GET /ping``: 200 once the model is loaded (the health check);
- ``POST /invocations``: the request body goes through :mod:`training.inference`
  (``input_fn`` -> ``predict_fn`` -> ``output_fn``) with the request's ``Content-Type`` and
  ``Accept``.

The same image trains and serves, so the endpoint runs exactly the torch version the model
was trained with (``training/requirements.txt``; the suite runs that version too). A
request that is not a valid payload answers 400 with the reason (field names, never field
values: a payload holds patient data); anything else answers 500 and logs the error's type
only. Nothing logs a request or response body.

A standard-library server on purpose: one process, one loaded model, requests handled
one at a time (the model runs single-threaded; SageMaker scales by instances). The
sagemaker-inference toolkit would add a Java model server to the image for the same
contract.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from training.inference import JSON, RequestError, input_fn, model_fn, output_fn, predict_fn

logger = logging.getLogger("oncopipe.serve")

MODEL_DIR = "/opt/ml/model"
PORT = 8080
#: SageMaker real-time endpoints accept payloads up to 6 MB.
MAX_BODY_BYTES = 6 * 1024 * 1024


class ModelServer(HTTPServer):
    """An HTTP server holding one loaded model (:func:`training.inference.model_fn`)."""

    def __init__(self, address: tuple[str, int], model: Any) -> None:
        super().__init__(address, Handler)
        self.model = model
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    """``/ping`` and ``/invocations``; request logging carries no body or header values."""

    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.command, self.path.split("?", 1)[0])

    def _answer(self, status: HTTPStatus, body: str, content_type: str = "text/plain") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/ping":
            self._answer(HTTPStatus.OK, "ok")
        else:
            self._answer(HTTPStatus.NOT_FOUND, "not found")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/invocations":
            self._answer(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._answer(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
            return
        if length > MAX_BODY_BYTES:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"payload over {MAX_BODY_BYTES} bytes")  # fmt: skip
            return
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type") or JSON
        accept = self.headers.get("Accept") or JSON
        if accept in ("*/*", ""):
            accept = JSON
        try:
            with self.server.lock:
                prediction = predict_fn(input_fn(body, content_type), self.server.model)
            answer = output_fn(prediction, accept)
        except RequestError as e:
            self._answer(HTTPStatus.BAD_REQUEST, str(e))
            return
        except Exception as e:  # noqa: BLE001 - any failure answers 500, the server lives on
            logger.error("invocation failed: %s", type(e).__name__)
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            return
        self._answer(HTTPStatus.OK, answer, JSON)


def make_server(model_dir: str, host: str = "0.0.0.0", port: int = PORT) -> ModelServer:  # noqa: S104
    """Load the model in ``model_dir`` and return a server bound to ``host:port``.

    Raises:
        FileNotFoundError: the folder holds no model (see ``model_fn``).
    """
    return ModelServer((host, port), model_fn(model_dir))


def main(argv: Sequence[str] | None = None) -> int:
    """``serve [--model-dir DIR] [--port N]``: serve until the container is stopped."""
    parser = argparse.ArgumentParser(prog="serve")
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", MODEL_DIR))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT",
                                                                       PORT)))  # fmt: skip
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = make_server(args.model_dir, port=args.port)
    logger.info("serving on port %d", args.port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
