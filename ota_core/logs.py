"""Log set-up: one line per event, ``key=value`` text (default) or JSON (``OTA_LOG_FORMAT=json``).

Services log messages in the form ``"offer sent device_id=d1 request_id=r1"``.
The JSON formatter turns those pairs into fields, so both formats carry the
device and request ids. Secrets never reach the log: the admin password is
printed once on the console at start-up (not logged), keys are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_PAIR = re.compile(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event = _PAIR.sub("", message).strip()
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event or message,
        }
        for key, value in _PAIR.findall(message):
            data.setdefault(key, value.strip("\"'"))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every migration step at INFO; only problems matter at start-up.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
