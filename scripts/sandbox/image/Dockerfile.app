# One published version of an app: the base plus the version it reports.
ARG BASE
FROM ${BASE}
ARG VERSION
ARG BROKEN=
ARG FAIL_AFTER=
ARG DIE_AFTER=
RUN echo "$VERSION" > /app/VERSION && if [ -n "$BROKEN" ]; then touch /app/BROKEN; fi && \
    if [ -n "$FAIL_AFTER" ]; then echo "$FAIL_AFTER" > /app/FAIL_AFTER; fi && \
    if [ -n "$DIE_AFTER" ]; then echo "$DIE_AFTER" > /app/DIE_AFTER; fi
LABEL org.opencontainers.image.version=$VERSION zdd-sandbox=1
