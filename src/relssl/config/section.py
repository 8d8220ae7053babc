"""The base of every config section: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section; a typo in a key fails validation instead of being ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
