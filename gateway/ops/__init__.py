"""Operations: health, metrics (JSON and Prometheus), hardware figures, reload."""
