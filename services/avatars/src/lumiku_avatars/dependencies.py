"""What the avatars endpoints need, as typed dependencies; `main.create_app` builds the parts."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from lumiku_avatars.objects import ObjectJanitor
from lumiku_avatars.workflows import AvatarWorkflows
from lumiku_common.media import MediaUrls
from lumiku_common.service import part

WorkflowsDep = Annotated[AvatarWorkflows, Depends(part(AvatarWorkflows))]
MediaDep = Annotated[MediaUrls, Depends(part(MediaUrls))]
JanitorDep = Annotated[ObjectJanitor, Depends(part(ObjectJanitor))]
