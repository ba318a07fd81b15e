"""LEADER: the LLM teacher LEADER(T) and the distilled student LEADER(S)."""
