"""An illustrative time-of-use (TOU) tariff, shaped like typical US utility TOU plans.

The numbers are ours (not any utility's), chosen to look like a residential TOU plan with a summer peak:

| period    | local standard time           | import $/kWh                      |
|-----------|-------------------------------|-----------------------------------|
| off-peak  | 00:00-07:00 and 23:00-24:00   | 0.09                              |
| shoulder  | 07:00-16:00 and 21:00-23:00   | 0.15                              |
| peak      | 16:00-21:00                   | 0.30; 0.40 in summer (Jun 1-Sep 30) |

Every day of the week is priced the same (no weekend rate). Exported energy is paid a flat 0.05 $/kWh.
A step is priced by the period its start time falls in; with steps of 15, 30 or 60 minutes no step
straddles a period boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridedge_env.scenarios.days import month_of_day


@dataclass(frozen=True)
class TouTariff:
    """A time-of-use import tariff with a seasonal peak rate and a flat export price."""

    off_peak_per_kwh: float = 0.09
    """Import price, 00:00-07:00 and 23:00-24:00 ($/kWh)."""
    shoulder_per_kwh: float = 0.15
    """Import price, 07:00-16:00 and 21:00-23:00 ($/kWh)."""
    peak_per_kwh: float = 0.30
    """Import price, 16:00-21:00 outside summer ($/kWh)."""
    summer_peak_per_kwh: float = 0.40
    """Import price, 16:00-21:00 in the summer months ($/kWh)."""
    export_per_kwh: float = 0.05
    """Flat price paid for exported energy ($/kWh)."""
    peak_hours: tuple[float, float] = (16.0, 21.0)
    """Start and end of the peak period (hours, local standard time)."""
    shoulder_hours: tuple[tuple[float, float], ...] = ((7.0, 16.0), (21.0, 23.0))
    """Shoulder periods (hours, local standard time); every other hour is off-peak."""
    summer_months: tuple[int, ...] = (6, 7, 8, 9)
    """Months (1-12) in which the summer peak rate applies."""

    def import_price(self, day_of_year: np.ndarray, step_minutes: int) -> np.ndarray:
        """Import price per step.

        Args:
            day_of_year: [D] day numbers 1..365.
            step_minutes: step length in minutes.

        Returns:
            [D, 1440 // step_minutes] $/kWh.
        """
        start_h = np.arange(0, 1440, step_minutes) / 60.0
        day_rate = np.full(start_h.shape, self.off_peak_per_kwh)
        for lo, hi in self.shoulder_hours:
            day_rate[(start_h >= lo) & (start_h < hi)] = self.shoulder_per_kwh
        is_peak = (start_h >= self.peak_hours[0]) & (start_h < self.peak_hours[1])
        summer = np.isin(month_of_day(np.asarray(day_of_year)), self.summer_months)
        price = np.broadcast_to(day_rate, (len(day_of_year), start_h.size)).copy()
        price[:, is_peak] = np.where(summer, self.summer_peak_per_kwh, self.peak_per_kwh)[:, None]
        return price

    def export_price(self, day_of_year: np.ndarray, step_minutes: int) -> np.ndarray:
        """Export (feed-in) price per step, [D, 1440 // step_minutes] $/kWh."""
        return np.full((len(day_of_year), 1440 // step_minutes), self.export_per_kwh)


DEFAULT_TARIFF = TouTariff()
