"""Structured JSON logs; every line carries the service name and the current request/correlation ids."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict

from lumiku_common.context import causation_id_var, correlation_id_var, request_id_var, traceparent_var

_service_name = "service"


def _add_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("service", _service_name)
    for key, var in (
        ("requestId", request_id_var),
        ("correlationId", correlation_id_var),
        ("causationId", causation_id_var),
        ("traceparent", traceparent_var),
    ):
        value = var.get()
        if value is not None:
            event.setdefault(key, value)
    return event


def _drop_terminal_colours(_: Any, __: str, event: EventDict) -> EventDict:
    event.pop("color_message", None)  # uvicorn's ANSI-coloured copy of the message
    return event


def configure_logging(service_name: str, level: str = "INFO") -> None:
    global _service_name
    _service_name = service_name
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_context,
    ]
    structlog.configure(
        # Filtered first: a line below the level costs a level check, not a timestamp and a context lookup.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _drop_terminal_colours],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own lines (start-up, errors) go through the JSON handler too; its access log would only
    # repeat our request line.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("aiormq", "aio_pika", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
