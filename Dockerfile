# chatd on Debian 12, built the way scripts/build builds it, with the Debian packages that
# scripts/install-deps installs (--cluster: redis-server and nginx too, so this one image runs
# every service of docker-compose.yml, llm-mock included: build/bin/llm-mock).
FROM debian:12

WORKDIR /src
COPY scripts/install-deps scripts/install-deps
RUN scripts/install-deps --cluster && rm -rf /var/lib/apt/lists/*

COPY . .
RUN scripts/build release \
 && (cd web-demo && npm ci --no-audit --no-fund --loglevel=error)

ENV CHAT_LISTEN=0.0.0.0:8000 \
    CHAT_ADMIN_LISTEN=0.0.0.0:9100 \
    CHAT_WEB_ROOT=/src/web-demo
EXPOSE 8000 9100
CMD ["/src/build/bin/chatd"]
