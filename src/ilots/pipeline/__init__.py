"""The ``ilots`` command and its configuration: the only package that reads the Hydra config;
everything below it takes plain values and objects."""
