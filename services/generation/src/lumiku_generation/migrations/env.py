from lumiku_common.migrations import run_env
from lumiku_generation.models import Base

run_env(Base.metadata)
