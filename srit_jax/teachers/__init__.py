"""Teachers: anything that writes chain-of-thought answers to questions.

Three kinds behind one interface (`Teacher.rationales`): a local model through our sampler,
an OpenAI-compatible HTTP endpoint, and readers of precomputed teacher outputs. Each
records its model family, so that runs can be labelled in-family or out-family.
"""

from srit_jax.teachers.base import Teacher, family_of
from srit_jax.teachers.build import make_teacher

__all__ = ["Teacher", "family_of", "make_teacher"]
