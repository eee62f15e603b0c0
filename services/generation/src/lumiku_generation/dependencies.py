"""What the generation endpoints need, as typed dependencies; `main.create_app` builds the parts."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from lumiku_common.service import part
from lumiku_generation.settings import GenerationSettings
from lumiku_generation.workflows import GenerationWorkflows

WorkflowsDep = Annotated[GenerationWorkflows, Depends(part(GenerationWorkflows))]
SettingsDep = Annotated[GenerationSettings, Depends(part(GenerationSettings))]
