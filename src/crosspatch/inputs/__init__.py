"""What a user hands crosspatch besides the models: prompt sets (``prompts``) and the validators
that score a forced continuation (``validators``)."""

__all__ = ["prompts", "validators"]
