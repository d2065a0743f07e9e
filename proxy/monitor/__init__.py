"""The online PERG robustness monitor: sampling, judges, the bounded queue and its workers,
shadow evaluation and canary probes (DESIGN.md, "Online adaptation")."""
