from lumiku_common.migrations import run_env
from lumiku_usage.models import Base

run_env(Base.metadata)
