"""The package's benchmarks (pre-training, inference, data scale, cohort, GPU check) and their shared harness."""
