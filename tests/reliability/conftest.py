"""Hypothesis profiles: a few hundred examples per target by default (fast, and derandomized
so a run is repeatable); TUWEN_FUZZ=slow runs at least 10,000 per target."""

import os

from hypothesis import HealthCheck, settings

COMMON = {"deadline": None, "derandomize": True,
          "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                    HealthCheck.function_scoped_fixture]}
settings.register_profile("default-fuzz", max_examples=200, **COMMON)
settings.register_profile("slow-fuzz", max_examples=10_000, **COMMON)
settings.load_profile("slow-fuzz" if os.environ.get("TUWEN_FUZZ") == "slow" else "default-fuzz")
