"""Log context and formats.

The request id, job id, pipeline id and principal live in context variables: set where
they become known (an RPC's admission, a job's run), they reach every record logged in
that task and the tasks it starts. ``log_format = "json"`` writes one JSON object a line
with those fields and the current trace and span ids; "text" (the default) stays readable.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any

from mps_snapshot_server.observability.tracing import current_ids

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
job_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="")
pipeline_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("pipeline_id", default="")
principal_var: contextvars.ContextVar[str] = contextvars.ContextVar("principal", default="")

#: Record attributes copied into JSON lines when set (name in the record, key in the line).
_CONTEXT_FIELDS = (
    ("request_id", "request_id"),
    ("job_id", "job_id"),
    ("pipeline_id", "pipeline_id"),
    ("principal", "principal"),
    ("trace_id", "trace_id"),
    ("span_id", "span_id"),
)
_FORMATS = ("text", "json")


def set_job(job_id: str, pipeline_id: str) -> None:
    job_id_var.set(job_id)
    pipeline_id_var.set(pipeline_id)


class ContextFilter(logging.Filter):
    """Adds the context fields to every record (empty strings where they do not apply)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        record.pipeline_id = pipeline_id_var.get()
        record.principal = principal_var.get()
        record.trace_id, record.span_id = current_ids()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attr, key in _CONTEXT_FIELDS:
            value = getattr(record, attr, "")
            if value and value != "-":
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the job id appended when the record concerns a job, and the
    trace id when tracing is on."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job_id = getattr(record, "job_id", "")
        if job_id and job_id not in text:
            text += f" (job {job_id})"
        trace_id = getattr(record, "trace_id", "")
        return f"{text} trace={trace_id}" if trace_id else text


def configure(level: str, fmt: str = "text") -> None:
    if fmt not in _FORMATS:
        raise ValueError(f"log_format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
