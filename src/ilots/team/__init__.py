"""The team profile: PostgreSQL, an S3 object store, an MLflow server and Label Studio on 127.0.0.1."""
