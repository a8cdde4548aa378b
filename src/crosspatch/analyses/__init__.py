"""The built-in analyses, one module each (controls of DESIGN 1.5 and the rest): each module
defines its analysis (when it needs passes), its options, its ``summarize`` and ``render``, and
registers them with :func:`crosspatch.core.registry.register_analysis`."""

__all__ = ["common", "hybrid_state", "label_swap", "native_history", "near_ties", "null_calibration",
           "position_subsets", "pre_divergence", "prompt_format", "pre_late_commitment", "random_later", "readout_agreement",
           "repeated_prompts"]
