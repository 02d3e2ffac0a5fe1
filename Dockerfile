# syntax=docker/dockerfile:1
#
# konnectivity-nats: one image for every role (knats frontend | agent | dial | status ...).
#
#   docker build -t konnectivity-nats:dev .
#   docker run --rm konnectivity-nats:dev --help
#
# Downloads only from the npm registry and Debian's package archive.

ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: compile TypeScript, then drop the dev dependencies -------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
RUN npm run build \
  && rm -rf dist/test \
  && npm prune --omit=dev --no-audit --no-fund --loglevel=error

# ---- runtime ---------------------------------------------------------------
FROM ${NODE_IMAGE}
# curl: health checks and the HTTP CONNECT demo client; openssl: deploy/gen-certs.sh.
RUN apt-get update \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl openssl \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/proto ./proto
COPY deploy/ ./deploy/
# `knats` on PATH for shell scripts; the socket and certificate folders exist in
# the image and belong to the unprivileged user, so Docker gives new named
# volumes mounted there the same owner.
RUN chmod 0755 dist/cli.js \
  && ln -s /app/dist/cli.js /usr/local/bin/knats \
  && mkdir -p /run/knats /certs \
  && chown node:node /run/knats /certs
# Upstream's entrypoints, so manifests written for proxy-server and proxy-agent
# (command: ["/proxy-server"]) run with only the image and --nats-url changed.
RUN printf '#!/bin/sh\nexec node /app/dist/cli.js frontend "$@"\n' > /proxy-server \
  && printf '#!/bin/sh\nexec node /app/dist/cli.js agent "$@"\n' > /proxy-agent \
  && chmod 0755 /proxy-server /proxy-agent
USER node
# Upstream's ports: frontend health 8092, agent health 8093, frontend mTLS 8131.
EXPOSE 8092 8093 8131
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["--help"]
