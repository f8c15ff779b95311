"""The ``ood`` section of a run's settings (``OodSettings``), built from ``SPLITS``: one optional
key per built-in split (its ``section_key``, its ``section`` model), in evaluation order. A
user's split registered later is accepted under its own key too, validated by its model. Pydantic
only: ``trainables.config`` re-exports it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from trainables.evaluation.splits import SPLITS, ood_section_key
from trainables.messages import first_problem


class OodSettingsBase(BaseModel):
    """What ``OodSettings`` has besides its fields: the sections of splits registered after it
    was built (a plugin's), each split's own check of its section, and ``section(split)``."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _registered_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        extra = [k for k in data if k not in cls.model_fields]
        if not extra:
            return data
        by_key = {split.section_key: split for split in SPLITS.values()}
        data = dict(data)
        for key in extra:
            split = by_key.get(key)
            if split is None:
                raise PydanticCustomError(
                    "unknown_ood_section", "unknown key", {"key": key, "known": ", ".join(by_key)}
                )
            if data[key] is None:
                continue
            try:
                data[key] = split.section.model_validate(data[key])
            except ValidationError as err:
                problem = first_problem(err)
                where = ".".join((key, *(str(p) for p in problem.loc)))
                raise PydanticCustomError(
                    "ood_section", "{reason}", {"where": where, "reason": problem.reason}
                ) from None
        return data

    @model_validator(mode="after")
    def _each_section(self) -> OodSettingsBase:
        for name, split in SPLITS.items():
            cfg = self.section(name)
            if cfg is not None:
                split.check_section(cfg)
        return self

    def section(self, split: str) -> Any:
        """The settings of OOD split ``split`` (a name in ``SPLITS``); None when not asked
        for."""
        key = ood_section_key(split)
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key)


OodSettings = create_model(  # type: ignore[call-overload]
    "OodSettings",
    __base__=OodSettingsBase,
    __module__=__name__,
    __doc__=(
        "The ``ood`` section: which OOD / corruption sets to evaluate the final model on.\n\n"
        "One key per split of ``SPLITS`` (its ``section_key``), in the same order."
    ),
    **{
        split.section_key: (split.section | None, None)
        for name, split in SPLITS.items()
        if SPLITS.builtin(name)
    },
)
