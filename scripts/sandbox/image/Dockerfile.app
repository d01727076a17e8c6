# One published version of an app: the base plus the version it reports.
ARG BASE
FROM ${BASE}
ARG VERSION
ARG BROKEN=
RUN echo "$VERSION" > /app/VERSION && if [ -n "$BROKEN" ]; then touch /app/BROKEN; fi
LABEL org.opencontainers.image.version=$VERSION zdd-sandbox=1
