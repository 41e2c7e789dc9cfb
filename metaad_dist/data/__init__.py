"""Data: raw tables -> prepared Parquet shards (prepare), sources, family roles, splits, scaling, storage (local or S3)."""
