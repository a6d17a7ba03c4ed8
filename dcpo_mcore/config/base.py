"""The base class every config section derives from."""
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")
