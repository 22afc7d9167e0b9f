"""Program-judged tasks: generators of problems whose answers a program can check (rewards for RL in phase 6,
benchmarks in phase 8). Each task is taught in a lesson first; this package holds the copy later lessons reuse."""
