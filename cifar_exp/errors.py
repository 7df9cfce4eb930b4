"""The error users see for bad configuration: key, value, and what is allowed."""


class ConfigError(ValueError):
    """A configuration value that cannot work; raised before any training starts."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"Invalid config: {key}={value!r}. Allowed: {allowed}.")
