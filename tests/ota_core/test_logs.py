import json
import logging

from ota_core.logs import JsonFormatter


def test_json_lines_carry_the_key_value_pairs() -> None:
    record = logging.LogRecord(
        "broker_bridge",
        logging.WARNING,
        __file__,
        1,
        "announcement rejected device_id=dev-1 request_id=r-9 error=bad-request",
        None,
        None,
    )
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["event"] == "announcement rejected"
    assert (data["device_id"], data["request_id"], data["error"]) == ("dev-1", "r-9", "bad-request")
    assert data["level"] == "warning" and "\n" not in line
