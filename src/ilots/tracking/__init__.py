"""MLflow: where runs are tracked, the registry with its champion and challenger aliases (moved
under a lock), and the pyfunc face of ilots models."""
