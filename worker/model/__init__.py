"""Model artifacts (versioned directories with the booster, the catalogue tables and metadata)
and the scoring backends (LightGBM, or the same model compiled with lleaves)."""
