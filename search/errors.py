"""The search layer's one exception hierarchy (a leaf module: imports nothing of ours).

Each class carries the HTTP status ``search.http`` answers with (and its OpenAI ``type``: the route answers errors
in the shape every other route of the service does) and the CLI's exit code, so the mapping from a failure to what a
user sees is written once here and nowhere else.
"""

from __future__ import annotations


class SearchError(Exception):
    """Base class: a failure with a one-line message meant for the user."""

    status_code: int = 500
    error_type: str = "Internal"
    openai_type: str = "server_error"
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SettingsError(SearchError):
    """The settings file or an option is wrong; nothing was started."""

    status_code = 500
    error_type = "Settings"
    exit_code = 2


class BadQuery(SearchError):
    """A search request that breaks the API contract (empty query, k out of range, unknown field)."""

    status_code = 422
    error_type = "Validation"
    openai_type = "invalid_request_error"
    exit_code = 2


class ModelMismatch(SearchError):
    """The store was built with another model (name or dimensions) than the one that embedded the query or chunks."""

    status_code = 409
    error_type = "ModelMismatch"
    openai_type = "invalid_request_error"
    exit_code = 2


class EmptyStore(SearchError):
    """Nothing has been indexed yet, so the store knows no model to compare the query with."""

    status_code = 404
    error_type = "EmptyStore"
    openai_type = "invalid_request_error"
    exit_code = 1


class ServiceError(SearchError):
    """The embedding (or rerank) service failed or could not be reached."""

    status_code = 502
    error_type = "Upstream"
    exit_code = 1


class ServiceBusy(ServiceError):
    """The embedding service kept answering 429/503 (full, or still starting) for as long as the caller waits."""

    status_code = 503
    error_type = "Unavailable"


class StoreError(SearchError):
    """The vector store failed (cannot open, cannot connect, corrupt)."""

    status_code = 500
    error_type = "Store"
    exit_code = 1


class ReaderError(SearchError):
    """An input file cannot be read as the reader for its suffix expects (missing text column, bad JSON line)."""

    status_code = 422
    error_type = "Reader"
    openai_type = "invalid_request_error"
    exit_code = 2


class RequestTooLarge(SearchError):
    """A ``POST /v1/search`` body over the route's size limit (named as the service's other routes name it)."""

    status_code = 413
    error_type = "PayloadTooLarge"
    openai_type = "invalid_request_error"
    exit_code = 2


class RequestTooSlow(SearchError):
    """A ``POST /v1/search`` body that stalled: the client sent nothing for the route's body timeout."""

    status_code = 408
    error_type = "ClientTimeout"
    openai_type = "invalid_request_error"
    exit_code = 2
