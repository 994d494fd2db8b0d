"""Exception types raised by gptclf; each message names the value at fault and the fix."""


class GptclfError(Exception):
    """Base class for every error gptclf raises on purpose."""


class ConfigError(GptclfError, ValueError):
    """Invalid settings, reported together and by flag name."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in self.problems))


class DataError(GptclfError, ValueError):
    """A data file that cannot be used as given."""


class ModelLoadError(GptclfError, OSError):
    """A base model that cannot be found or loaded."""


class CheckpointError(GptclfError, ValueError):
    """A saved classifier that does not match what loading expects."""
