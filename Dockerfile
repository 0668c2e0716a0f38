# The OTA service image: one image, one `ota` command per container (see compose.yaml).
#   docker build -t ota-push-broker .
#   docker run --rm -e OTA_ADMIN_PASSWORD=... -p 8000:8000 -v ota-keys:/var/lib/ota/keys ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project as a regular (non-editable) package; the source tree is not
# needed at run time. README.md* is a glob so the build works whether or not
# pyproject.toml names a readme.
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY ota_core ./ota_core
COPY broker_bridge ./broker_bridge
COPY http_files ./http_files
COPY admin ./admin
RUN pip install . && cd / && rm -rf /src

# Non-root, with the state folders created here so that fresh named volumes mounted on
# them start out owned by this user. keys/ holds the release private key: owner only.
# mqtt/ is where compose's `mqtt-users` service writes the Mosquitto password file; it
# runs as uid 1883 (Mosquitto's user in the eclipse-mosquitto image), so the broker can
# read the 0600 file from the shared volume.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/ota --no-create-home ota \
    && mkdir -p /var/lib/ota/keys /var/lib/ota/packages /var/lib/ota/data /var/lib/ota/mqtt \
    && chown -R ota:ota /var/lib/ota \
    && chmod 0700 /var/lib/ota/keys \
    && chown 1883:1883 /var/lib/ota/mqtt \
    && chmod 0700 /var/lib/ota/mqtt

ENV OTA_HOST=0.0.0.0 \
    OTA_HTTP_PORT=8000 \
    OTA_KEYS_DIR=/var/lib/ota/keys \
    OTA_PACKAGES_DIR=/var/lib/ota/packages \
    OTA_DATA_DIR=/var/lib/ota/data

WORKDIR /var/lib/ota
USER ota
EXPOSE 8000
ENTRYPOINT []
CMD ["ota", "http"]
