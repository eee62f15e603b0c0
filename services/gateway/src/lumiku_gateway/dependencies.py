"""What the gateway's routes need, as typed dependencies; `main.create_app` builds the parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from lumiku_common.media import MediaSigner
from lumiku_common.service import part
from lumiku_common.storage import Storage
from lumiku_gateway.openapi import SuiteOpenAPI
from lumiku_gateway.upstreams import Upstreams


@dataclass(frozen=True)
class Media:
    """Where /media reads images from, and what checks their URLs."""

    storage: Storage
    signer: MediaSigner


UpstreamsDep = Annotated[Upstreams, Depends(part(Upstreams))]
OpenAPIDep = Annotated[SuiteOpenAPI, Depends(part(SuiteOpenAPI))]
MediaDep = Annotated[Media, Depends(part(Media))]
