# One image for every orderops processor, the one-shot set-up jobs and the simulator.
# Built from requirements.lock, like `make`; the command picks the processor:
#   docker build -t orderops .
#   docker run orderops python -m order_state      (fulfillment, returns, notifier, timeline)
#   docker run orderops orderops topics create     (orderops policies publish, orderops replay ...)
# Settings come from the environment (docs/deploy.md). State lives in /var/lib/orderops: give each
# processor a volume there.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/orderops
COPY requirements.lock ./
COPY kernel/ kernel/
COPY services/ services/
COPY tools/ tools/
# Wheels only (confluent-kafka, rocksdict, fastavro ship manylinux wheels): no compiler needed.
RUN /opt/orderops/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: --upgrade pip \
 && /opt/orderops/bin/pip install --no-cache-dir --disable-pip-version-check -c requirements.lock \
      ./kernel ./services/order-state ./services/fulfillment ./services/returns ./services/notifier \
      ./services/timeline ./tools

FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/orderops orderops \
 && mkdir -p /var/lib/orderops /srv/orderops && chown orderops:orderops /var/lib/orderops
COPY --from=build /opt/orderops /opt/orderops
COPY schemas/ /srv/orderops/schemas/
COPY policies/ /srv/orderops/policies/
WORKDIR /srv/orderops
ENV PATH=/opt/orderops/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORDEROPS_SCHEMAS_DIR=/srv/orderops/schemas \
    ORDEROPS_RUN_DIR=/var/lib/orderops \
    ORDEROPS_DATA_DIR=/var/lib/orderops/state \
    ORDEROPS_WEB_BIND=0.0.0.0
USER orderops
VOLUME ["/var/lib/orderops"]
EXPOSE 6101 6102 6103 6104 6105
# Ready = partitions assigned, tables recovered, global views read (the processor's /healthz).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['WEB_PORT'], timeout=2)"]
CMD ["orderops", "--help"]
