"""The PERG library, shared by the online monitor and the offline benchmark: datasets, cases,
answer extraction, rates (BR, AFR, RER, PVR), statistics and the LLM judges. No model calls of
its own: the judges are given a completion function."""
