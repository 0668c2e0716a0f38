"""The MQTT edge: answers device announcements with signed offers, records status reports.

* :mod:`broker_bridge.handler` — the sans-IO core (message in, reply + registry event out).
* :mod:`broker_bridge.bridge` — the paho-mqtt client around it (``ota bridge``).
* :mod:`broker_bridge.embedded` — the embedded amqtt broker ``ota run`` starts.
"""
