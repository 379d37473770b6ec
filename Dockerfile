# danube-mcp as a container: the streamable-HTTP transport (/mcp) on port 8000, as a non-root user,
# fit for a read-only root file system. Nothing secret is ever part of the image: the Danube API key
# and the access token are given when the container starts (environment or mounted files).
#
# Build from a checkout. The image installs from a wheelhouse made beforehand, so the image build
# itself needs no network, no compiler and no index credentials:
#
#   python3.11 -m pip wheel --wheel-dir dist/wheelhouse '.[redis]' 'async-timeout>=4.0.3'
#
# (async-timeout: redis needs it on Pythons before 3.11.3, such as Debian bookworm's 3.11.2, and pip
# leaves it out when the wheelhouse is made with a newer 3.11.)
#   docker build -t danube-mcp:0.1.0 .          # or: podman build --format docker ...
#
# The wheels must match the base image's Python (3.11) and CPU architecture. BASE_IMAGE may be any
# Debian-like image with python3 (3.11) and python3-venv, e.g. one made with debootstrap.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY dist/wheelhouse/ /tmp/wheelhouse/
RUN python3 -m venv /opt/danube-mcp \
 && /opt/danube-mcp/bin/python -m pip install --no-index --find-links /tmp/wheelhouse \
        --no-cache-dir --disable-pip-version-check 'danube-mcp[redis]' \
 && /opt/danube-mcp/bin/python -m pip uninstall --yes --disable-pip-version-check pip \
 && /opt/danube-mcp/bin/danube-mcp --version

FROM ${BASE_IMAGE}
LABEL io.modelcontextprotocol.server.name="io.github.danube-mcp/danube-mcp" \
      org.opencontainers.image.title="danube-mcp" \
      org.opencontainers.image.description="MCP server: store API keys and bearer tokens in Danube (store_credential)" \
      org.opencontainers.image.source="https://github.com/danube-mcp/danube-mcp" \
      org.opencontainers.image.licenses="MIT"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin danube-mcp
COPY --from=build /opt/danube-mcp /opt/danube-mcp
# HOME and XDG_DATA_HOME point at /tmp, the one place that must stay writable (a tmpfs when the
# root file system is read-only); the server writes nothing there unless the sandbox is on.
ENV PATH=/opt/danube-mcp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_DATA_HOME=/tmp \
    DANUBE_MCP_TRANSPORT=streamable-http \
    DANUBE_MCP_HOST=0.0.0.0 \
    DANUBE_MCP_PORT=8000
USER 10001:10001
EXPOSE 8000
# /healthz answers before every other check (no Host rule, no token); http.client ignores proxies.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/danube-mcp/bin/python", "-c", "import http.client as h, os, sys; c = h.HTTPConnection('127.0.0.1', int(os.environ.get('DANUBE_MCP_PORT') or 8000), timeout=4); c.request('GET', '/healthz'); sys.exit(0 if c.getresponse().status == 200 else 1)"]
ENTRYPOINT ["danube-mcp"]
