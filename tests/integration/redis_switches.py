"""The cases of REDIS_OVERRIDES (shared/config.py) the key Redis tests run under: every
override of redis-py on (the default), and each one off, its plain redis-py path in use."""

from __future__ import annotations

import pytest

from shared.config import REDIS_OVERRIDES, RedisOverrides

CASES = [pytest.param(RedisOverrides(), id="all-on"),
         *(pytest.param(RedisOverrides.without(name), id=f"-{name}")
           for name in REDIS_OVERRIDES)]
