"""One exception hierarchy for the whole service.

Each error class knows its HTTP status, its error type (TEI's ``error_type``, the failure counter's label) and its
OpenAI ``type``; ``error_body`` gives the one JSON shape of every error answer, so whoever answers (a replica's app,
the front door, its HTTP edge, the dashboard) answers alike. Errors that never reach a client (a config, a plan, a
deploy that fails) carry the one-line message the CLI prints. Imports nothing: both sides of the service share it.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class: a failure with a one-line message meant for the user."""

    status_code: int = 500
    error_type: str = "Internal"
    openai_type: str = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for the error response."""
        return {}


class ConfigError(OrchestratorError):
    """The config file is invalid; raised before anything starts (CLI exit code 2)."""

    error_type = "Config"


class PlanError(OrchestratorError):
    """The config cannot be placed on the hardware found (CLI exit code 2)."""

    error_type = "Plan"


class ValidationFailed(OrchestratorError):
    """A request is well-formed JSON but breaks the API contract."""

    status_code = 422
    error_type = "Validation"
    openai_type = "invalid_request_error"


class InputTooLong(ValidationFailed):
    """A text is longer than the model accepts and truncation was refused."""


class EmptyInput(OrchestratorError):
    """A request with nothing to embed."""

    status_code = 400
    error_type = "Empty"
    openai_type = "invalid_request_error"


class WrongTask(OrchestratorError):
    """A route of the other task: an embedding route on a reranker, or a rerank route on an embedder."""

    status_code = 400
    error_type = "WrongTask"
    openai_type = "invalid_request_error"


class MalformedRequest(OrchestratorError):
    """The body is not valid JSON (or not UTF-8)."""

    status_code = 400
    error_type = "Validation"
    openai_type = "invalid_request_error"


class PayloadTooLarge(OrchestratorError):
    """The body is bigger than ``server.max_request_bytes``."""

    status_code = 413
    error_type = "PayloadTooLarge"
    openai_type = "invalid_request_error"


class Overloaded(OrchestratorError):
    """The instance's bounded queue is full; the client should retry later."""

    status_code = 429
    error_type = "Overloaded"
    openai_type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Unauthorized(OrchestratorError):
    """No API key, or the wrong one."""

    status_code = 401
    error_type = "Unauthorized"
    openai_type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(OrchestratorError):
    """Unknown route."""

    status_code = 404
    error_type = "NotFound"
    openai_type = "invalid_request_error"


class DeadlineExceeded(OrchestratorError):
    """The request did not finish within ``server.request_timeout_s``; its queued texts were dropped."""

    status_code = 504
    error_type = "Timeout"
    openai_type = "timeout_error"


class BackendFailure(OrchestratorError):
    """The model failed while computing a batch (TEI answers 424 for this)."""

    status_code = 424
    error_type = "Backend"


class Unhealthy(OrchestratorError):
    """No healthy instance can take the request."""

    status_code = 503
    error_type = "Unhealthy"


class ServiceUnavailable(OrchestratorError):
    """No instance could take the request right now (starting, or every try lost its instance); retry later."""

    status_code = 503
    error_type = "Unavailable"
    openai_type = "server_error"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class InstanceLost(ServiceUnavailable):
    """The replica handling a request died or became unreachable before answering (safe to retry elsewhere)."""

    error_type = "InstanceLost"


class NoInstance(ServiceUnavailable):
    """No replica is running (yet) to take the request."""

    error_type = "NoInstance"


class DeployError(OrchestratorError):
    """Ray or Serve could not start the service (CLI exit code 1)."""

    error_type = "Deploy"


class PortBusy(OrchestratorError):
    """The configured host:port cannot be listened on (CLI exit code 1)."""

    error_type = "PortBusy"


class HeadersTooLarge(OrchestratorError):
    """The request line and headers exceed ``server.max_header_bytes`` (answered before the request is read)."""

    status_code = 431
    error_type = "HeadersTooLarge"
    openai_type = "invalid_request_error"


class MalformedHttp(OrchestratorError):
    """The bytes received are not an HTTP/1.1 request (the connection is closed after the answer)."""

    status_code = 400
    error_type = "MalformedHttp"
    openai_type = "invalid_request_error"


class ClientTooSlow(OrchestratorError):
    """The client did not send its headers, or its body stalled, within ``server.client_timeout_s``."""

    status_code = 408
    error_type = "ClientTimeout"
    openai_type = "invalid_request_error"


class TooManyConnections(ServiceUnavailable):
    """The front door holds ``server.max_connections`` open connections already; retry later."""

    error_type = "TooManyConnections"


OPENAI_SHAPED_PATHS = ("/embeddings",)  # TEI's alias of /v1/embeddings answers in OpenAI's shape too


def error_body(path: str, error: OrchestratorError) -> dict[str, object]:
    """The JSON body of an error answer: OpenAI's shape under ``/v1/`` (and TEI's ``/embeddings``), TEI's elsewhere."""
    if path.startswith("/v1/") or path in OPENAI_SHAPED_PATHS:
        return {"error": {"message": error.message, "type": error.openai_type, "param": None, "code": error.error_type}}
    return {"error": error.message, "error_type": error.error_type}
