"""A trial's storage id through Optuna's public storage API: tests touch none of Optuna's private names."""

from __future__ import annotations

import optuna


def trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """The id of trial ``number`` of study ``study_name`` (numbers count within a study, ids across the storage)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)
