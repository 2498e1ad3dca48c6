# One image for every Blackboard process: the arguments pick the kind
# (scheduler, worker --lane L, projector, up, ...). No dev tools inside.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BB_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY blackboard ./blackboard
COPY projections ./projections
COPY agents ./agents
COPY replay ./replay
RUN pip install '.[otlp]' \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin bb \
 && mkdir -p /data && chown bb:bb /data

USER 10001
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["bb"]
CMD ["--help"]
