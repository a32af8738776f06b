"""One budget across the fleet: a run's spend, counted in Redis as each API call returns.

Every Messages API call of a run (its agents' and its pilot's) is checked against `budget.max_cost_usd`
before it is sent and counted as soon as it returns, on whichever worker it ran. Workers that check at the
same moment may each make one more call, so the cap is overshot by at most one call per running job.
A command agent's CLI reports its cost only when it exits: its whole attempt counts as one call.
"""

from __future__ import annotations

import redis

from otto_farm import keys
from otto_farm.errors import OttoFarmError

SPEND_TTL_S = 30 * 24 * 3600  # outlives any run; `prune` forgets it with the run


class BudgetSpent(OttoFarmError):
    def __init__(self, spent: float, cap: float) -> None:
        self.spent, self.cap = spent, cap
        super().__init__(f"budget spent: ${spent:.4f} of ${cap:.4f}")


class Budget:
    def __init__(self, client: redis.Redis, run_id: str, cap: float | None) -> None:
        self.client, self.key, self.cap = client, keys.spend_key(run_id), cap

    @property
    def spent(self) -> float:
        return float(self.client.get(self.key) or 0)

    def check(self) -> None:
        """Raise BudgetSpent once the run has spent its cap: the next call must not be made."""
        if self.cap is not None and (spent := self.spent) >= self.cap:
            raise BudgetSpent(spent, self.cap)

    def spend(self, cost_usd: float) -> float:
        """Count one call's cost; the run's spend so far."""
        if cost_usd <= 0:
            return self.spent
        with self.client.pipeline() as pipe:
            pipe.incrbyfloat(self.key, cost_usd)
            pipe.expire(self.key, SPEND_TTL_S)
            total, _ = pipe.execute()
        return float(total)
