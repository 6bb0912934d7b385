"""Operations: structured logging, Prometheus metrics, and the health endpoints' HTTP server."""
