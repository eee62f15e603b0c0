from lumiku_avatars.models import Base
from lumiku_common.migrations import run_env

run_env(Base.metadata)
