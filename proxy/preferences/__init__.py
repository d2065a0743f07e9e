"""Preferences: the profile store (and, in the same database, the monitor's judged samples).

`open_store(settings.profiles)` gives the configured `Store`; open it with `await store.open()`
or `async with store:`. See `store.py` for the semantics every backend shares.
"""

from __future__ import annotations

from .models import JudgedSample, Preference, Profile, SampleBucket, SampleCounts, SampleLabel, SampleSeries, SampleSummary, SampleTexts
from .store import Store, open_store
from .store_errors import (
    InvalidCursor,
    PreferenceNotFound,
    SampleNotFound,
    StoreError,
    StoreUnavailable,
    TooManyPreferences,
    UnstorableText,
)

__all__ = [
    "InvalidCursor",
    "JudgedSample",
    "Preference",
    "PreferenceNotFound",
    "Profile",
    "SampleBucket",
    "SampleCounts",
    "SampleLabel",
    "SampleNotFound",
    "SampleSeries",
    "SampleSummary",
    "SampleTexts",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TooManyPreferences",
    "UnstorableText",
    "open_store",
]
