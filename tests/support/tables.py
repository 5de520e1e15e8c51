"""Tables shaped like an analyst's: a churn export made here, and the real ones packages ship."""

from __future__ import annotations

import numpy as np
import pandas as pd

CONTRACTS = ("Month-to-month", "One year", "Two year")
PLANS = ("basic", "plus", "premium", "family")


def churn(rows: int = 800, seed: int = 0) -> pd.DataFrame:
    """A churn export: a customer ID, text categories, a numeric store code, charges with gaps, a
    signup date as ISO text, a boolean, and a Yes/No label that depends on them."""
    rng = np.random.default_rng(seed)
    contract = rng.choice(CONTRACTS, rows, p=[0.5, 0.3, 0.2])
    tenure = rng.integers(1, 72, rows)
    charges = rng.normal(70, 20, rows).round(2)
    partner = rng.random(rows) < 0.45
    signup = pd.Timestamp("2019-01-01") + pd.to_timedelta(rng.integers(0, 5 * 365, rows), unit="D")
    logit = 6.0 * (contract == "Month-to-month") - 0.2 * tenure + 0.1 * (charges - 70) - 3.0 * partner + 2.5
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{100000 + i}" for i in range(rows)],
            "contract": contract,
            "plan": rng.choice(PLANS, rows),
            "store": rng.choice([12, 31, 47], rows),
            "tenure_months": tenure,
            "monthly_charges": charges,
            "signup_date": signup.strftime("%Y-%m-%d"),
            "has_partner": partner,
            "churned": np.where(churned, "Yes", "No"),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "monthly_charges"] = np.nan
    frame.loc[rng.random(rows) < 0.03, "plan"] = None
    return frame


def penguins() -> pd.DataFrame:
    """palmerpenguins: text species, island and sex with gaps, measurements with gaps, a year."""
    import palmerpenguins

    return palmerpenguins.load_penguins()
