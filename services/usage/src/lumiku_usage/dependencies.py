"""What the usage endpoints need, as typed dependencies; `main.create_app` builds the parts."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from lumiku_common.service import part
from lumiku_usage.workflows import UsageWorkflows

WorkflowsDep = Annotated[UsageWorkflows, Depends(part(UsageWorkflows))]
