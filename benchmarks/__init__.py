"""Speed and memory benchmarks of mplug_hf (run `python -m benchmarks.run_benchmarks --help`)."""
